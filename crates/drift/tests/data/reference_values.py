# Reference values for crates/drift/tests/reference.rs (scipy 1.17.1, numpy 2.4.6).
import numpy as np
from scipy import stats
from scipy.spatial import distance
def seq(n, mul, mod, div, off=0.0):
    return np.array([((i * mul) % mod) / div + off for i in range(n)])
a = seq(60, 37, 101, 10.0)
b = seq(45, 53, 97, 10.0, 2.5)
c = seq(50, 29, 89, 7.0)
e = seq(50, 31, 83, 7.0, 2.0)
print("ks_unequal", repr(stats.ks_2samp(a, b).statistic), repr(stats.ks_2samp(a, b).pvalue))
print("ks_equal", repr(stats.ks_2samp(c, e).statistic), repr(stats.ks_2samp(c, e).pvalue))
big1 = seq(700, 61, 1009, 50.0); big2 = seq(900, 67, 1013, 50.0, 0.9)
print("ks_big", repr(stats.ks_2samp(big1, big2).statistic), repr(stats.ks_2samp(big1, big2).pvalue))
# Evidently chi-square: expected = reference counts * len(current)/len(reference)
ref_counts = np.array([30., 50., 20., 0.5*0+10.]); cur_counts = np.array([40., 35., 25., 20.])
k = cur_counts.sum() / ref_counts.sum()
print("chi2", repr(stats.chisquare(cur_counts, ref_counts * k)[1]))
# Evidently z-test
def z(ref_hits, n1, cur_hits, n2):
    p1 = ref_hits / n1; p2 = cur_hits / n2
    P = (p1 * n1 + p2 * n2) / (n1 + n2)
    zs = (p1 - p2) / np.sqrt(P * (1 - P) * (1.0 / n1 + 1.0 / n2))
    return 2 * (1 - stats.norm.cdf(np.abs(zs)))
print("ztest", repr(z(120., 400., 150., 380.)))
print("wasserstein_normed", repr(stats.wasserstein_distance(a, b) / max(np.std(a), 0.001)))
# Evidently get_binned_data (numerical, > 20 reference values) + jensenshannon
def binned(ref, cur):
    n = len(ref)
    bins = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    rp = np.histogram(ref, bins)[0] / n
    cp = np.histogram(cur, bins)[0] / len(cur)
    for arr in (rp, cp):
        m = min(arr[arr != 0])
        np.place(arr, arr == 0, m / 10**6 if m <= 0.0001 else 0.0001)
    return rp, cp
rp, cp = binned(big1, big2 * 1.3)
print("js_numeric", repr(distance.jensenshannon(rp, cp)))
print("js_edges", len(np.histogram_bin_edges(np.concatenate([big1, big2*1.3]), bins="sturges")))
# categorical: shares by category, zero filled
rc = np.array([300., 500., 200., 0.]) ; cc = np.array([250., 450., 250., 50.])
rp = rc / rc.sum(); cp = cc / cc.sum()
for arr in (rp, cp):
    m = min(arr[arr != 0])
    np.place(arr, arr == 0, m / 10**6 if m <= 0.0001 else 0.0001)
print("js_categorical", repr(distance.jensenshannon(rp, cp)))
