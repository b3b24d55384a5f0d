//! Kernel SVR (linfa-svm) on a stratified subsample.

use std::sync::OnceLock;

use linfa::traits::{Fit, Predict};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::{
    DesignMatrix, ModelError, ModelFiles, ModelKind, Regressor, Result, check_width,
    from_json_file, stratified_subsample, to_json_file,
};

/// Hyper-parameters of the SVR.
///
/// Kernel SVR costs O(n²) memory and O(n²)–O(n³) time in the training rows,
/// and its prediction cost grows with the number of support vectors, so it is
/// trained on `max_train_rows` rows stratified on the target (the full
/// training set has ~370,000 rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SvrParams {
    /// Regularisation C (> 0).
    pub c: f64,
    /// Width of the ε-insensitive tube (≥ 0).
    pub epsilon: f64,
    /// Gaussian kernel width: k(a, b) = exp(-|a - b|² / gamma_width).
    pub gamma_width: f64,
    /// Training rows used (stratified subsample).
    pub max_train_rows: usize,
}

impl Default for SvrParams {
    fn default() -> Self {
        Self {
            c: 1.0,
            epsilon: 0.1,
            gamma_width: 30.0,
            max_train_rows: 2_000,
        }
    }
}

/// A fitted SVR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SvrModel {
    params: SvrParams,
    feature_names: Vec<String>,
    trained_rows: usize,
    svm: linfa_svm::Svm<f64, f64>,
    /// The decision function as a matrix, built on first use.
    #[serde(skip)]
    expansion: ExpansionCache,
}

/// A cache, not part of the model: models are equal whether or not it is
/// filled.
#[derive(Debug, Clone, Default)]
struct ExpansionCache(OnceLock<Option<KernelExpansion>>);

impl PartialEq for ExpansionCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// An RBF SVR's decision function, `f(x) = Σ_k a_k·exp(−|x − s_k|² / w) − ρ`,
/// held so that a batch of rows is predicted with one matrix product per
/// block (`|x − s|² = |x|² + |s|² − 2x·s`) instead of a loop over support
/// vectors per row, which is what `linfa_svm` does and what dominated the
/// gate's time (two thirds of it on the UCI file). Same terms, summed in the
/// same order; only the distance is computed another way, so predictions
/// agree with `linfa_svm`'s to about 1e-12.
#[derive(Debug, Clone, PartialEq)]
struct KernelExpansion {
    /// Support vectors, one per row.
    support: Array2<f64>,
    /// Their squared norms.
    norms: Array1<f64>,
    /// Their coefficients `a_k`.
    coef: Array1<f64>,
    /// The offset `ρ`.
    rho: f64,
    /// The kernel width `w`.
    width: f64,
}

impl KernelExpansion {
    /// Rows per block: a block's kernel matrix is rows × support vectors.
    const BLOCK: usize = 512;

    /// Reads the support vectors and coefficients out of the model's
    /// serialised form (`linfa_svm` keeps them private); `None` for a kernel
    /// other than the Gaussian or a form this version does not know.
    fn of(svm: &linfa_svm::Svm<f64, f64>) -> Option<Self> {
        let v = serde_json::to_value(svm).ok()?;
        let width = v.get("kernel_method")?.get("Gaussian")?.as_f64()?;
        let m = v.get("sep_hyperplane")?.get("WeightedCombination")?;
        let dim: Vec<usize> = serde_json::from_value(m.get("dim")?.clone()).ok()?;
        let data: Vec<f64> = serde_json::from_value(m.get("data")?.clone()).ok()?;
        let support = Array2::from_shape_vec((*dim.first()?, *dim.get(1)?), data).ok()?;
        // `linfa_svm` pairs the support vectors with the coefficients above
        // this threshold, in order.
        let coef: Array1<f64> = svm
            .alpha
            .iter()
            .copied()
            .filter(|a| a.abs() > 100.0 * f64::EPSILON)
            .collect();
        if coef.len() != support.nrows() || !width.is_finite() || width <= 0.0 {
            return None;
        }
        let norms = support.rows().into_iter().map(|r| r.dot(&r)).collect();
        Some(Self {
            support,
            norms,
            coef,
            rho: svm.rho,
            width,
        })
    }

    fn predict(&self, x: ArrayView2<'_, f64>) -> Array1<f64> {
        let mut out = Array1::zeros(x.nrows());
        let blocks = x.axis_chunks_iter(Axis(0), Self::BLOCK);
        for (xb, mut ob) in blocks.zip(out.axis_chunks_iter_mut(Axis(0), Self::BLOCK)) {
            let dots = xb.dot(&self.support.t());
            for ((row, dots), o) in xb.rows().into_iter().zip(dots.rows()).zip(ob.iter_mut()) {
                let xn = row.dot(&row);
                let mut sum = 0.0;
                for ((&d, &sn), &a) in dots.iter().zip(&self.norms).zip(&self.coef) {
                    let d2 = (xn + sn - 2.0 * d).max(0.0);
                    sum += (-d2 / self.width).exp() * a;
                }
                *o = sum - self.rho;
            }
        }
        out
    }
}

impl SvrParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = self.c.is_finite()
            && self.c > 0.0
            && self.epsilon.is_finite()
            && self.epsilon >= 0.0
            && self.gamma_width.is_finite()
            && self.gamma_width > 0.0
            && self.max_train_rows >= 10;
        if ok {
            Ok(())
        } else {
            Err(ModelError::Params {
                model: "svr",
                reason: format!(
                    "need c > 0, epsilon >= 0, gamma_width > 0, max_train_rows >= 10; got {self:?}"
                ),
            })
        }
    }

    /// Fits on (a stratified subsample of) a training matrix.
    pub fn fit(&self, train: &DesignMatrix) -> Result<SvrModel> {
        self.validate()?;
        let sample = stratified_subsample(train, self.max_train_rows);
        let ds = linfa::Dataset::new(sample.x.clone(), sample.y.clone());
        let svm = linfa_svm::Svm::<f64, f64>::params()
            .c_svr(self.c, Some(self.epsilon))
            .gaussian_kernel(self.gamma_width)
            .fit(&ds)
            .map_err(|e| ModelError::Training {
                model: "svr",
                reason: e.to_string(),
            })?;
        Ok(SvrModel {
            params: self.clone(),
            feature_names: train.feature_names.clone(),
            trained_rows: sample.len(),
            svm,
            expansion: ExpansionCache::default(),
        })
    }
}

impl SvrModel {
    /// Reads the model back.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        Ok(from_json_file::<Self>(ModelKind::Svr, files)?.model)
    }

    /// Rows it was trained on.
    pub fn trained_rows(&self) -> usize {
        self.trained_rows
    }

    /// Predictions of `linfa_svm` itself, one row and one support vector at
    /// a time (what [`Regressor::predict`] computes faster).
    pub fn predict_reference(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
        check_width("svr", self.feature_names.len(), &x)?;
        Ok(self.svm.predict(&x))
    }
}

impl Regressor for SvrModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Svr
    }
    fn feature_names(&self) -> &[String] {
        &self.feature_names
    }
    fn hyper_params(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["trained_rows"] = self.trained_rows.into();
        v["support_vectors"] = self.svm.nsupport().into();
        v
    }
    fn predict(&self, x: ArrayView2<'_, f64>) -> Result<Array1<f64>> {
        check_width("svr", self.feature_names.len(), &x)?;
        let expansion = self
            .expansion
            .0
            .get_or_init(|| KernelExpansion::of(&self.svm));
        Ok(match expansion {
            Some(e) => e.predict(x),
            None => self.svm.predict(&x),
        })
    }
    fn to_files(&self) -> Result<ModelFiles> {
        to_json_file(ModelKind::Svr, &self.feature_names, self)
    }
}
