//! The pricing console (a static page over the public API, embedded in the
//! binary), the login form, the API's OpenAPI description and docs page,
//! `/metrics`, and the admin operations.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{COOKIE, Denied};
use crate::{ApiError, ApiErrorBody, App, ReloadOutcome};

const INDEX: &str = include_str!("../console/index.html");
const JS: &str = include_str!("../console/console.js");
const CSS: &str = include_str!("../console/console.css");

/// A short hash of the assets, so a new build is never served stale from a
/// browser cache while unchanged assets stay cached.
fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(JS);
        h.update(CSS);
        h.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

fn typed(content_type: &'static str, cache: &'static str, body: impl IntoResponse) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    (headers, body).into_response()
}

/// Content-Security-Policy of the console: nothing from elsewhere.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console.
#[utoipa::path(get, path = "/", tag = "console",
    responses(
        (status = 200, description = "The pricing console", content_type = "text/html", body = String),
        (status = 401, description = "The login form (access control is on and no key was given)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn index() -> Response {
    let mut r = typed(
        "text/html; charset=utf-8",
        "no-cache",
        INDEX.replace("__VERSION__", version()),
    );
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

/// The console's script and style sheet.
#[utoipa::path(get, path = "/assets/{file}", tag = "console",
    params(("file" = String, Path, description = "`console.js` or `console.css`")),
    responses(
        (status = 200, description = "The asset", content((String = "text/javascript"), (String = "text/css"))),
        (status = 404, description = "No such asset", body = ApiErrorBody),
    ))]
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let immutable = "public, max-age=31536000, immutable";
    match file.as_str() {
        "console.js" => Ok(typed("text/javascript; charset=utf-8", immutable, JS)),
        "console.css" => Ok(typed("text/css; charset=utf-8", immutable, CSS)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no asset `{}`", file.chars().take(40).collect::<String>()),
        )),
    }
}

/// The login page, with a message when a key was refused.
pub(crate) fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let message = message
        .map(|m| {
            format!(
                "<p role=alert><strong>{}</strong></p>",
                m.replace('&', "&amp;").replace('<', "&lt;")
            )
        })
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\">\
<title>Pricing console: sign in</title><link rel=stylesheet href=\"/assets/console.css?v={}\"></head>\
<body><main><h1>Pricing console</h1>{message}<form method=post action=\"/login\">\
<label for=key>API key</label> <input id=key name=key type=password autocomplete=current-password required autofocus> \
<button type=submit>Sign in</button></form><p class=muted>Prices and margins are business secrets: this service needs an API key.</p></main></body></html>",
        version()
    );
    let mut r = typed("text/html; charset=utf-8", "no-store", html);
    *r.status_mut() = status;
    r
}

/// The login form.
#[utoipa::path(get, path = "/login", tag = "console",
    responses((status = 200, description = "The login form", content_type = "text/html", body = String)))]
pub(crate) async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// Signs in: checks the key and sets the console's cookie (`HttpOnly`,
/// `SameSite=Strict`), then redirects to the console.
#[utoipa::path(post, path = "/login", tag = "console",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`key=<API key>`"),
    responses(
        (status = 200, description = "Access control is off: the form says no key is needed", content_type = "text/html", body = String),
        (status = 303, description = "Signed in: the cookie is set, on to the console"),
        (status = 401, description = "The key was refused (the form again, saying why)", content_type = "text/html", body = String),
    ))]
pub(crate) async fn login(State(app): State<App>, body: Bytes) -> Response {
    let key = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned());
    if !app.inner.auth.enabled() {
        return login_page(
            StatusCode::OK,
            Some("access control is off on this server: no key is needed"),
        );
    }
    match app
        .inner
        .auth
        .check(key.as_deref().filter(|k| !k.is_empty()))
    {
        Ok(_) => {
            let value: String =
                url::form_urlencoded::byte_serialize(key.unwrap_or_default().as_bytes()).collect();
            let cookie =
                format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_static("/"));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                headers.insert(header::SET_COOKIE, v);
            }
            (StatusCode::SEE_OTHER, headers).into_response()
        }
        Err(denied) => {
            app.inner.metrics.denied(denied.label());
            login_page(StatusCode::UNAUTHORIZED, Some(&denied.message()))
        }
    }
}

/// Signs out (clears the cookie).
#[utoipa::path(post, path = "/logout", tag = "console",
    responses((status = 303, description = "Signed out")))]
pub(crate) async fn logout() -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, HeaderValue::from_static("/login"));
    headers.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("price_api_key=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    (StatusCode::SEE_OTHER, headers).into_response()
}

/// The OpenAPI 3.1 description of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI description", body = Object)))]
pub(crate) async fn openapi_json() -> Response {
    typed("application/json", "no-cache", crate::openapi())
}

/// A readable page of the OpenAPI description (rendered here, no
/// external viewer).
#[utoipa::path(get, path = "/docs", tag = "service",
    responses((status = 200, description = "The API's documentation", content_type = "text/html", body = String)))]
pub(crate) async fn docs() -> Response {
    let spec: serde_json::Value = serde_json::from_str(crate::openapi()).unwrap_or_default();
    typed("text/html; charset=utf-8", "no-cache", docs_html(&spec))
}

fn h(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn docs_html(spec: &serde_json::Value) -> String {
    let mut out = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\">\
<title>{0}</title><link rel=stylesheet href=\"/assets/console.css?v={1}\"></head><body><main><h1>{0}</h1><p>{2}</p>\
<p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {3}). Console: <a href=\"/\">/</a>.</p>",
        h(spec["info"]["title"].as_str().unwrap_or("API")),
        version(),
        h(spec["info"]["description"].as_str().unwrap_or("")),
        h(spec["openapi"].as_str().unwrap_or("3"))
    );
    if let Some(paths) = spec["paths"].as_object() {
        for (path, item) in paths {
            let Some(ops) = item.as_object() else {
                continue;
            };
            for (method, op) in ops {
                out.push_str(&format!(
                    "<section><h2><code>{} {}</code></h2><p>{}</p>",
                    method.to_uppercase(),
                    h(path),
                    h(op["description"]
                        .as_str()
                        .or(op["summary"].as_str())
                        .unwrap_or(""))
                ));
                if let Some(params) = op["parameters"].as_array() {
                    out.push_str("<table><tr><th scope=col>parameter</th><th scope=col>in</th><th scope=col>description</th></tr>");
                    for p in params {
                        out.push_str(&format!(
                            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                            h(p["name"].as_str().unwrap_or("")),
                            h(p["in"].as_str().unwrap_or("")),
                            h(p["description"].as_str().unwrap_or(""))
                        ));
                    }
                    out.push_str("</table>");
                }
                if let Some(responses) = op["responses"].as_object() {
                    out.push_str("<ul>");
                    for (status, r) in responses {
                        let schema = r["content"]
                            .as_object()
                            .and_then(|c| c.values().next())
                            .map(|c| {
                                let s = &c["schema"];
                                s["$ref"]
                                    .as_str()
                                    .or(s["items"]["$ref"].as_str())
                                    .map(|r| r.rsplit('/').next().unwrap_or(r).to_string())
                                    .unwrap_or_else(|| s["type"].as_str().unwrap_or("").to_string())
                            })
                            .unwrap_or_default();
                        out.push_str(&format!(
                            "<li><strong>{status}</strong> {} <code>{}</code></li>",
                            h(r["description"].as_str().unwrap_or("")),
                            h(&schema)
                        ));
                    }
                    out.push_str("</ul>");
                }
                out.push_str("</section>");
            }
        }
    }
    if let Some(schemas) = spec["components"]["schemas"].as_object() {
        out.push_str("<h2>Schemas</h2>");
        for (name, s) in schemas {
            out.push_str(&format!(
                "<details><summary><code>{}</code></summary><pre>{}</pre></details>",
                h(name),
                h(&serde_json::to_string_pretty(s).unwrap_or_default())
            ));
        }
    }
    out.push_str("</main></body></html>");
    out
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ()))]
pub(crate) async fn metrics(State(app): State<App>) -> Response {
    typed(
        "text/plain; version=0.0.4; charset=utf-8",
        "no-store",
        app.inner.metrics.render(&app),
    )
}

/// What `POST /admin/reload` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadAnswer {
    /// `unchanged`, `swapped`, `refused` or `pointer_unreadable`.
    pub outcome: String,
    /// The release serving after the check.
    pub release: String,
    /// Why a release was refused or the pointer could not be read.
    pub reason: Option<String>,
}

/// What `POST /admin/cache/clear` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClearAnswer {
    /// Entries removed.
    pub removed: u64,
    /// The cache backend.
    pub cache: String,
}

/// Checks the production pointer now (as SIGHUP does).
#[utoipa::path(post, path = "/admin/reload", tag = "admin",
    responses(
        (status = 200, description = "What the check did", body = ReloadAnswer),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 403, description = "An admin key is required, or access control is off", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn admin_reload(State(app): State<App>) -> Response {
    let outcome = app.reload().await;
    let release = app.recommender().release().to_string();
    let (outcome, reason) = match outcome {
        ReloadOutcome::Unchanged => ("unchanged", None),
        ReloadOutcome::Swapped(_) => ("swapped", None),
        ReloadOutcome::Refused(r) => ("refused", Some(r.reason)),
        ReloadOutcome::PointerUnreadable(e) => ("pointer_unreadable", Some(e)),
    };
    axum::Json(ReloadAnswer {
        outcome: outcome.into(),
        release,
        reason,
    })
    .into_response()
}

/// Removes this service's cache entries.
#[utoipa::path(post, path = "/admin/cache/clear", tag = "admin",
    responses(
        (status = 200, description = "Entries removed", body = ClearAnswer),
        (status = 401, description = "An API key is required", body = ApiErrorBody),
        (status = 403, description = "An admin key is required, or access control is off", body = ApiErrorBody),
        (status = 503, description = "The cache failed", body = ApiErrorBody),
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub(crate) async fn admin_cache_clear(State(app): State<App>) -> Result<Response, ApiError> {
    let removed = app.cache().clear().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("clearing the cache: {e}"),
        )
    })?;
    Ok(axum::Json(ClearAnswer {
        removed,
        cache: app.cache().backend_name().to_string(),
    })
    .into_response())
}

/// Access control: see [`crate::auth`].
pub(crate) async fn authorize(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let admin = path.starts_with("/admin/");
    let auth = &app.inner.auth;
    if !auth.enabled() {
        if admin {
            app.inner.metrics.denied("disabled");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "admin operations need access control: start the server with API keys (--api-keys or PRICE_API_KEYS)",
            )
            .into_response();
        }
        return next.run(request).await;
    }
    let open = path == "/ping" || path == "/login" || path.starts_with("/assets/");
    if open {
        return next.run(request).await;
    }
    let presented = crate::auth::presented(request.headers());
    let denied = match auth.check(presented.as_deref()) {
        Ok(key) if admin && key.role != crate::auth::Role::Admin => {
            Denied::Forbidden(key.name.clone())
        }
        Ok(key) => {
            let name = key.name.clone();
            let mut response = next.run(request).await;
            response
                .extensions_mut()
                .insert(crate::observe::KeyName(name));
            return response;
        }
        Err(denied) => denied,
    };
    app.inner.metrics.denied(denied.label());
    // A person opening the console gets the login form; a program gets JSON.
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if path == "/" && wants_html && !matches!(denied, Denied::Forbidden(_)) {
        let message = (denied != Denied::Missing).then(|| denied.message());
        return login_page(StatusCode::UNAUTHORIZED, message.as_deref());
    }
    let status = match denied {
        Denied::Forbidden(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut response = ApiError::new(status, denied.message()).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"price-api\""),
        );
    }
    response
}
