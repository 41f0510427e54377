//! Routing and the pages: who may see what, and the checks every change passes.
//!
//! | path | method | who |
//! | --- | --- | --- |
//! | `/login` | GET, POST | anyone (the form carries a login token bound to a cookie) |
//! | `/logout` | POST | a session, with its CSRF token |
//! | `/` | GET | status and health |
//! | `/queues` | GET | jobs, outbox, learning |
//! | `/studies`, `/studies/<tag>` | GET | recent studies; one study by `log_tag` of its UID |
//! | `/results/<job>`, `/results/<job>/slices/<z>.png` | GET | a result, its images |
//! | `/models` | GET | routes, installed models, head versions |
//! | `/models/<id>/rollback` | POST | an admin, with the CSRF token |
//!
//! Without a live session every page but the login form redirects there (303). Every POST
//! must carry the session's CSRF token (else 403) and, when the browser sends `Origin` or
//! `Sec-Fetch-Site`, come from this server's own origin (else 403).

use super::images::{self, Images};
use super::server::{Request, Response};
use super::sessions::{constant_time_eq, random_token, Session, Sessions, Throttle};
use super::users::{self, Role};
use super::views;
use super::ConsoleConfig;
use crate::audit::{self, DicomEvent};
use crate::config::Config;
use crate::readiness::Readiness;
use models::registry::{AnyPackage, Registry};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "radiant_session";
pub const LOGIN_COOKIE: &str = "radiant_login";
/// Studies the list shows unless `?limit=` says otherwise.
const DEFAULT_STUDIES: usize = 100;

const TEMPLATES: &[(&str, &str)] = &[
    (
        "base.html",
        include_str!("../../templates/console/base.html"),
    ),
    (
        "login.html",
        include_str!("../../templates/console/login.html"),
    ),
    (
        "error.html",
        include_str!("../../templates/console/error.html"),
    ),
    (
        "status.html",
        include_str!("../../templates/console/status.html"),
    ),
    (
        "queues.html",
        include_str!("../../templates/console/queues.html"),
    ),
    (
        "studies.html",
        include_str!("../../templates/console/studies.html"),
    ),
    (
        "study.html",
        include_str!("../../templates/console/study.html"),
    ),
    (
        "result.html",
        include_str!("../../templates/console/result.html"),
    ),
    (
        "models.html",
        include_str!("../../templates/console/models.html"),
    ),
];
const STYLESHEET: &str = include_str!("../../templates/console/console.css");

/// Everything the pages share.
pub struct State {
    config: Config,
    console: ConsoleConfig,
    readiness: Arc<Readiness>,
    sessions: Mutex<Sessions>,
    throttle: Mutex<Throttle>,
    templates: minijinja::Environment<'static>,
    images: Images,
    /// Verified packages by (id, version), opened once.
    packages: Mutex<HashMap<(String, String), Arc<AnyPackage>>>,
    started_ms: i64,
}

/// The logged-in user as the templates see it.
#[derive(Debug, Clone, Serialize)]
struct UserView {
    name: String,
    role: &'static str,
    csrf: String,
    admin: bool,
}

/// A page that could not be shown: its status and what to tell the user.
#[derive(Debug)]
struct PageError {
    status: u16,
    message: String,
}

impl PageError {
    fn new(status: u16, message: impl Into<String>) -> PageError {
        PageError {
            status,
            message: message.into(),
        }
    }

    fn not_found() -> PageError {
        PageError::new(
            404,
            "There is no such page (or it names nothing that exists).",
        )
    }

    /// An internal failure: logged with its detail, shown without it.
    fn internal(e: impl std::fmt::Display) -> PageError {
        tracing::error!(error = %e, "console page failed");
        PageError::new(
            500,
            "The page could not be made; the appliance's log says why.",
        )
    }
}

type PageResult = Result<Response, PageError>;

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn cookie(name: &str, value: &str, path: &str, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path={path}; Secure; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

/// A user name as logs may show it: at most 64 characters, quoted and escaped.
impl State {
    /// Put a console action into the audit trail, the actor being `console:` and the user.
    fn audit(
        &self,
        action: &str,
        user: &str,
        outcome: String,
        dicom: DicomEvent,
        detail: serde_json::Value,
    ) {
        audit::record(
            &audit::AuditLog::of(&self.config),
            audit::Event {
                action: action.into(),
                actor: format!("console:{}", user.chars().take(64).collect::<String>()),
                outcome,
                dicom: Some(dicom),
                detail,
            },
        );
    }
}

fn logged_name(name: &str) -> String {
    format!("{:?}", name.chars().take(64).collect::<String>())
}

/// Whether the request comes from this server's own pages: no `Origin` (or the same one),
/// and no `Sec-Fetch-Site` other than same-origin or a user's own navigation.
fn same_origin(req: &Request) -> bool {
    if let Some(site) = req.header("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match req.header("origin") {
        None => true,
        Some(origin) => {
            let scheme = if req.tls { "https" } else { "http" };
            req.header("host")
                .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
        }
    }
}

impl State {
    pub fn new(
        config: Config,
        console: ConsoleConfig,
        readiness: Arc<Readiness>,
    ) -> anyhow::Result<State> {
        let mut templates = minijinja::Environment::new();
        for (name, source) in TEMPLATES {
            templates.add_template(name, source)?;
        }
        Ok(State {
            sessions: Mutex::new(Sessions::new(
                Duration::from_secs(console.session_idle_seconds),
                Duration::from_secs(console.session_max_hours * 3600),
            )),
            throttle: Mutex::new(Throttle::new(
                console.max_failed_logins,
                Duration::from_secs(console.lockout_seconds),
            )),
            config,
            console,
            readiness,
            templates,
            images: Images::default(),
            packages: Mutex::default(),
            started_ms: crate::db::now_ms(),
        })
    }

    /// Render `template` with `data` plus what every page has.
    fn render(
        &self,
        status: u16,
        template: &str,
        title: &str,
        page: &str,
        user: Option<&UserView>,
        mut data: serde_json::Value,
    ) -> Response {
        if let Some(map) = data.as_object_mut() {
            map.insert("title".into(), title.into());
            map.insert("page".into(), page.into());
            map.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            map.insert(
                "user".into(),
                serde_json::to_value(user).unwrap_or(serde_json::Value::Null),
            );
        }
        match self
            .templates
            .get_template(template)
            .and_then(|t| t.render(&data))
        {
            Ok(html) => Response::html(status, html),
            Err(e) => {
                tracing::error!(template, error = %e, "console template failed");
                Response::text(500, "internal error\n")
            }
        }
    }

    fn error_page(&self, e: PageError, user: Option<&UserView>) -> Response {
        let title = match e.status {
            400 => "Bad request",
            403 => "Not allowed",
            404 => "Not found",
            405 => "Method not allowed",
            409 => "Not done",
            _ => "Error",
        };
        let back = if user.is_some() { "/" } else { "/login" };
        self.render(
            e.status,
            "error.html",
            title,
            "",
            user,
            json!({ "message": e.message, "back": back }),
        )
    }

    /// The live session the request's cookie names, with the account's current role; `None`
    /// (and the session ended) when the account is gone or its password changed.
    fn session(&self, req: &Request) -> Option<(String, Session)> {
        let token = req.cookie(SESSION_COOKIE)?;
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .touch(token, Instant::now())?;
        let accounts = match users::load(&self.config.data_dir) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "console accounts cannot be read; nobody is let in");
                return None;
            }
        };
        match accounts.iter().find(|u| u.name == session.user) {
            Some(account) if account.password == session.password => {
                let mut session = session;
                session.role = account.role;
                Some((token.to_string(), session))
            }
            _ => {
                tracing::info!(user = %logged_name(&session.user), "console session ended: the account changed");
                self.sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(token);
                None
            }
        }
    }

    /// The form of a POST from `session`'s pages, or 403 when its CSRF token is missing or
    /// wrong or it comes from another origin.
    fn post_form(
        &self,
        req: &Request,
        session: &Session,
    ) -> Result<Vec<(String, String)>, PageError> {
        let refuse = |why: &str| {
            tracing::warn!(user = %logged_name(&session.user), path = %req.path, address = %req.peer, why, "console POST refused");
            PageError::new(
                403,
                "The form's security token is missing or wrong (or it came from another site); \
                 reload the page and try again.",
            )
        };
        if !same_origin(req) {
            return Err(refuse("another origin"));
        }
        let form = req.form().unwrap_or_default();
        let token = field(&form, "csrf").unwrap_or("");
        if !constant_time_eq(token.as_bytes(), session.csrf.as_bytes()) {
            return Err(refuse("CSRF token missing or wrong"));
        }
        Ok(form)
    }

    /// The active version of installed model `id`, verified once and kept.
    fn package(&self, id: &str) -> Result<Arc<AnyPackage>, String> {
        let registry = Registry::new(&self.config.data_dir);
        let version = registry
            .active_version(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("model {id} is not installed"))?;
        let key = (id.to_string(), version);
        if let Some(p) = self
            .packages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(p.clone());
        }
        let package = Arc::new(registry.open_active_any(id).map_err(|e| e.to_string())?);
        self.packages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, package.clone());
        Ok(package)
    }

    fn identifiers(&self, session: &Session) -> bool {
        self.console.show_identifiers && session.role == Role::Admin
    }
}

/// Answer one request.
pub fn handle(state: &State, req: &Request) -> Response {
    let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["static", "console.css"]) => Response::new(
            200,
            "text/css; charset=utf-8",
            STYLESHEET.as_bytes().to_vec(),
        ),
        ("GET", ["favicon.ico"]) => Response::text(404, "not found\n"),
        ("GET", ["login"]) => match state.session(req) {
            Some(_) => Response::redirect("/"),
            None => login_form(state, 200, None, ""),
        },
        ("POST", ["login"]) => login(state, req),
        (_, ["login"]) => state.error_page(PageError::new(405, "GET or POST only."), None),
        _ => match state.session(req) {
            None => {
                let mut r = Response::redirect("/login");
                if req.cookie(SESSION_COOKIE).is_some() {
                    r = r.with_header("Set-Cookie", &cookie(SESSION_COOKIE, "", "/", Some(0)));
                }
                r
            }
            Some((token, session)) => {
                let user = UserView {
                    name: session.user.clone(),
                    role: session.role.as_str(),
                    csrf: session.csrf.clone(),
                    admin: session.role == Role::Admin,
                };
                route(state, req, &segments, &token, &session, &user)
                    .unwrap_or_else(|e| state.error_page(e, Some(&user)))
            }
        },
    }
}

fn route(
    state: &State,
    req: &Request,
    segments: &[&str],
    token: &str,
    session: &Session,
    user: &UserView,
) -> PageResult {
    match (req.method.as_str(), segments) {
        ("GET", []) => status_page(state, user),
        ("GET", ["queues"]) => queues_page(state, user),
        ("GET", ["studies"]) => studies_page(state, req, session, user),
        ("GET", ["studies", tag]) => study_page(state, tag, session, user),
        ("GET", ["results", id]) => result_page(state, id, session, user),
        ("GET", ["results", id, "slices", file]) => slice_png(state, id, file),
        ("GET", ["models"]) => models_page(state, req, user),
        ("POST", ["models", id, "rollback"]) => rollback(state, req, id, session),
        ("POST", ["logout"]) => logout(state, req, token, session),
        (
            _,
            []
            | ["queues"]
            | ["studies"]
            | ["studies", _]
            | ["results", _]
            | ["results", _, "slices", _]
            | ["models"],
        ) => Err(PageError::new(405, "This page is read with GET only.")),
        (_, ["models", _, "rollback"] | ["logout"]) => {
            Err(PageError::new(405, "This action is a POST from its form."))
        }
        _ => Err(PageError::not_found()),
    }
}

fn login_form(state: &State, status: u16, message: Option<&str>, name: &str) -> Response {
    let token = match random_token() {
        Ok(t) => t,
        Err(e) => return state.error_page(PageError::internal(e), None),
    };
    state
        .render(
            status,
            "login.html",
            "Log in",
            "login",
            None,
            json!({ "login_token": token, "message": message, "name": name }),
        )
        .with_header(
            "Set-Cookie",
            &cookie(LOGIN_COOKIE, &token, "/login", Some(3600)),
        )
}

fn login(state: &State, req: &Request) -> Response {
    let form = req.form().unwrap_or_default();
    let name = field(&form, "user").unwrap_or("");
    let password = field(&form, "password").unwrap_or("");
    let token = field(&form, "csrf").unwrap_or("");
    let expected = req.cookie(LOGIN_COOKIE).unwrap_or("");
    let shown_name = if users::valid_name(name) { name } else { "" };
    if !same_origin(req)
        || token.is_empty()
        || !constant_time_eq(token.as_bytes(), expected.as_bytes())
    {
        tracing::warn!(
            address = %req.peer,
            origin = ?req.header("origin"),
            fetch_site = ?req.header("sec-fetch-site"),
            has_token = !token.is_empty(),
            has_cookie = !expected.is_empty(),
            "console login refused: another origin, or the login form's token missing or wrong"
        );
        return login_form(
            state,
            403,
            Some("The login form expired or came from another site; please log in again."),
            shown_name,
        );
    }
    let key: String = name.chars().take(64).collect();
    let now = Instant::now();
    let refused = state
        .throttle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .refused(&key, req.peer, now);
    if let Some(wait) = refused {
        tracing::warn!(user = %logged_name(name), address = %req.peer, "console login refused: too many failed attempts");
        let minutes = wait.as_secs().div_ceil(60).max(1);
        return login_form(
            state,
            429,
            Some(&format!(
                "Too many failed logins; try again in {minutes} minute{}.",
                if minutes == 1 { "" } else { "s" }
            )),
            shown_name,
        )
        .with_header("Retry-After", &wait.as_secs().max(1).to_string());
    }
    let accounts = match users::load(&state.config.data_dir) {
        Ok(a) => a,
        Err(e) => return state.error_page(PageError::internal(e), None),
    };
    match users::authenticate(&accounts, name, password) {
        Some(account) => {
            state
                .throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .succeeded(&key);
            let created = state
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .create(
                    &account.name,
                    account.role,
                    &account.password,
                    Instant::now(),
                );
            let (session_token, _) = match created {
                Ok(c) => c,
                Err(e) => return state.error_page(PageError::internal(e), None),
            };
            tracing::info!(user = %logged_name(&account.name), role = %account.role, address = %req.peer, "console login");
            state.audit(
                "console.login",
                &account.name,
                "success".into(),
                DicomEvent::UserAuthenticated,
                serde_json::json!({ "role": account.role.as_str(), "address": req.peer.to_string() }),
            );
            Response::redirect("/")
                .with_header(
                    "Set-Cookie",
                    &cookie(SESSION_COOKIE, &session_token, "/", None),
                )
                .with_header("Set-Cookie", &cookie(LOGIN_COOKIE, "", "/login", Some(0)))
        }
        None => {
            state
                .throttle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failed(&key, req.peer, now);
            tracing::warn!(user = %logged_name(name), address = %req.peer, "console login failed");
            state.audit(
                "console.login",
                name,
                "failure: wrong user name or password".into(),
                DicomEvent::UserAuthenticated,
                serde_json::json!({ "address": req.peer.to_string() }),
            );
            login_form(state, 401, Some("Wrong user name or password."), shown_name)
        }
    }
}

fn logout(state: &State, req: &Request, token: &str, session: &Session) -> PageResult {
    state.post_form(req, session)?;
    state
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(token);
    tracing::info!(user = %logged_name(&session.user), address = %req.peer, "console logout");
    state.audit(
        "console.logout",
        &session.user,
        "success".into(),
        DicomEvent::UserAuthenticated,
        serde_json::json!({ "address": req.peer.to_string() }),
    );
    Ok(Response::redirect("/login")
        .with_header("Set-Cookie", &cookie(SESSION_COOKIE, "", "/", Some(0))))
}

fn status_page(state: &State, user: &UserView) -> PageResult {
    let s = views::status(&state.config, &state.readiness, state.started_ms)
        .map_err(PageError::internal)?;
    Ok(state.render(
        200,
        "status.html",
        "Status",
        "status",
        Some(user),
        json!({ "s": s }),
    ))
}

fn queues_page(state: &State, user: &UserView) -> PageResult {
    let q = views::queues(&state.config.data_dir).map_err(PageError::internal)?;
    Ok(state.render(
        200,
        "queues.html",
        "Queues",
        "queues",
        Some(user),
        json!({ "q": q }),
    ))
}

fn studies_page(state: &State, req: &Request, session: &Session, user: &UserView) -> PageResult {
    let query = req
        .query_pairs()
        .ok_or_else(|| PageError::new(400, "The query string does not decode."))?;
    let limit = match field(&query, "limit") {
        None => DEFAULT_STUDIES,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=views::MAX_STUDIES).contains(n))
            .ok_or_else(|| {
                PageError::new(
                    400,
                    format!("limit must be a number from 1 to {}.", views::MAX_STUDIES),
                )
            })?,
    };
    let identifiers = state.identifiers(session);
    let studies =
        views::studies(&state.config.data_dir, limit, identifiers).map_err(PageError::internal)?;
    Ok(state.render(
        200,
        "studies.html",
        "Studies",
        "studies",
        Some(user),
        json!({ "studies": studies, "limit": limit, "identifiers": identifiers }),
    ))
}

fn study_page(state: &State, tag: &str, session: &Session, user: &UserView) -> PageResult {
    let st = views::study(&state.config.data_dir, tag, state.identifiers(session))
        .map_err(PageError::internal)?
        .ok_or_else(PageError::not_found)?;
    let title = format!("Study {}", st.tag);
    Ok(state.render(
        200,
        "study.html",
        &title,
        "studies",
        Some(user),
        json!({ "st": st }),
    ))
}

fn job_of(state: &State, id: &str) -> Result<views::JobRecord, PageError> {
    let id: i64 = id.parse().map_err(|_| PageError::not_found())?;
    views::job(&state.config.data_dir, id)
        .map_err(PageError::internal)?
        .ok_or_else(PageError::not_found)
}

/// The model's labels for drawing (its manifest's colours), else a fixed palette.
fn segments_for(state: &State, model_id: &str) -> Vec<pacs_bridge::objects::seg::Segment> {
    match state.package(model_id) {
        Ok(p) => images::segments_of(p.outputs().labels),
        Err(e) => {
            tracing::debug!(model = %model_id, error = %e, "console draws with its own colours");
            images::fallback_segments()
        }
    }
}

fn result_page(state: &State, id: &str, session: &Session, user: &UserView) -> PageResult {
    let job = job_of(state, id)?;
    let identifiers = state.identifiers(session);
    let r =
        views::result(&state.config.data_dir, &job, identifiers).map_err(PageError::internal)?;
    let (images, images_error, patient) = if job.state == crate::db::JobState::Done {
        let segments = segments_for(state, &job.model_id);
        match state.images.get(&state.config.data_dir, &job, &segments) {
            Ok(rendered) => (
                json!({
                    "slices": rendered.slices.iter().map(|s| json!({"z": s.z, "labelled": s.labelled})).collect::<Vec<_>>(),
                    "total_slices": rendered.total_slices,
                    "labelled_slices": rendered.labelled_slices,
                    "width": rendered.width,
                    "height": rendered.height,
                    "legend": rendered.legend,
                }),
                None,
                if identifiers {
                    rendered.patient.clone()
                } else {
                    None
                },
            ),
            Err(e) => {
                if matches!(e, images::ImageError::Failed(_)) {
                    tracing::warn!(job = job.id, error = %e, "console cannot draw a result");
                }
                (serde_json::Value::Null, Some(e.to_string()), None)
            }
        }
    } else {
        (
            serde_json::Value::Null,
            Some(format!("the job is {}", job.state)),
            None,
        )
    };
    let title = format!("Result {}", job.id);
    Ok(state.render(
        200,
        "result.html",
        &title,
        "studies",
        Some(user),
        json!({ "r": r, "images": images, "images_error": images_error, "patient": patient }),
    ))
}

fn slice_png(state: &State, id: &str, file: &str) -> PageResult {
    let job = job_of(state, id)?;
    let z: usize = file
        .strip_suffix(".png")
        .and_then(|z| z.parse().ok())
        .ok_or_else(PageError::not_found)?;
    let segments = segments_for(state, &job.model_id);
    let rendered = state
        .images
        .get(&state.config.data_dir, &job, &segments)
        .map_err(|e| PageError::new(404, e.to_string()))?;
    let slice = rendered
        .slices
        .iter()
        .find(|s| s.z == z)
        .ok_or_else(PageError::not_found)?;
    Ok(Response::new(200, "image/png", slice.png.to_vec()))
}

#[derive(Debug, Serialize)]
struct ModelHeads {
    id: String,
    version: String,
    learnable: bool,
    champion: String,
    heads: Vec<views::HeadLine>,
    /// What a rollback may name besides the champion's parent.
    targets: Vec<String>,
    error: Option<String>,
}

fn model_heads(state: &State, id: &str, version: &str) -> ModelHeads {
    let mut out = ModelHeads {
        id: id.to_string(),
        version: version.to_string(),
        learnable: false,
        champion: "global".into(),
        heads: Vec::new(),
        targets: Vec::new(),
        error: None,
    };
    let learnable = match state.package(id) {
        Ok(p) => models::learnable::Learnable::of(&p),
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let Some(learnable) = learnable else {
        return out;
    };
    out.learnable = true;
    let listed = views::read_db(&state.config.data_dir)
        .and_then(|conn| crate::heads::list(&conn, &learnable));
    match listed {
        Ok(heads) => {
            for h in &heads {
                if h.champion {
                    out.champion = crate::heads::describe(h.id);
                }
                let accepted = matches!(
                    h.state,
                    crate::heads::HeadStatus::Global
                        | crate::heads::HeadStatus::Gate(crate::db::HeadState::Accepted)
                );
                if accepted && !h.champion {
                    out.targets.push(crate::heads::describe(h.id));
                }
            }
            out.heads = views::head_lines(&heads);
        }
        Err(e) => out.error = Some(format!("{e:#}")),
    }
    out
}

fn models_page(state: &State, req: &Request, user: &UserView) -> PageResult {
    let query = req
        .query_pairs()
        .ok_or_else(|| PageError::new(400, "The query string does not decode."))?;
    let (installed, installed_error) = match Registry::new(&state.config.data_dir).list() {
        Ok(list) => (list, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let heads: Vec<ModelHeads> = installed
        .iter()
        .filter(|m| m.active)
        .map(|m| model_heads(state, &m.id, &m.version))
        .collect();
    let notice = field(&query, "rolled_back")
        .and_then(|id| heads.iter().find(|h| h.id == id))
        .map(|h| {
            format!(
                "Rolled back {}: its champion is now head {}.",
                h.id, h.champion
            )
        });
    Ok(state.render(
        200,
        "models.html",
        "Models",
        "models",
        Some(user),
        json!({
            "routes": views::routes(&state.config),
            "installed": installed,
            "installed_error": installed_error,
            "heads": heads,
            "notice": notice,
        }),
    ))
}

fn rollback(state: &State, req: &Request, id: &str, session: &Session) -> PageResult {
    let form = state.post_form(req, session)?;
    if session.role != Role::Admin {
        tracing::warn!(user = %logged_name(&session.user), model = %id, "console rollback refused: not an admin");
        state.audit(
            "head.rollback",
            &session.user,
            "failure: not an admin".into(),
            DicomEvent::SecurityAlert,
            serde_json::json!({ "model": id }),
        );
        return Err(PageError::new(
            403,
            "Rolling back a head needs the admin role.",
        ));
    }
    let installed = Registry::new(&state.config.data_dir)
        .list()
        .map_err(PageError::internal)?;
    if !installed.iter().any(|m| m.active && m.id == id) {
        return Err(PageError::not_found());
    }
    let to = match field(&form, "to").unwrap_or("") {
        "" => None,
        other => Some(
            other
                .parse::<crate::heads::Target>()
                .map_err(|e| PageError::new(400, e))?,
        ),
    };
    let package = state.package(id).map_err(PageError::internal)?;
    let learnable = models::learnable::Learnable::of(&package).ok_or_else(|| {
        PageError::new(409, format!("Model {id} has no trainable part: no heads."))
    })?;
    let conn = crate::db::open(&state.config.data_dir).map_err(PageError::internal)?;
    let before = crate::heads::champion(&conn, &learnable.id, &learnable.version)
        .map_err(PageError::internal)?;
    let detail = serde_json::json!({
        "model": learnable.id,
        "version": learnable.version,
        "from_head": crate::heads::describe(before),
    });
    let after = match crate::heads::rollback(&conn, &learnable, to) {
        Ok(after) => {
            state.audit(
                "head.rollback",
                &session.user,
                format!("success: champion {}", crate::heads::describe(after)),
                DicomEvent::SecurityAlert,
                detail,
            );
            after
        }
        Err(e) => {
            state.audit(
                "head.rollback",
                &session.user,
                format!("failure: {e:#}"),
                DicomEvent::SecurityAlert,
                detail,
            );
            return Err(PageError::new(409, format!("Not rolled back: {e:#}")));
        }
    };
    tracing::info!(
        user = %logged_name(&session.user),
        model = %learnable.id,
        version = %learnable.version,
        from = %crate::heads::describe(before),
        to = %crate::heads::describe(after),
        "head rolled back from the console; the next study uses it"
    );
    Ok(Response::redirect(&format!("/models?rolled_back={id}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn state(dir: &std::path::Path) -> State {
        let mut config = Config::embedded_default().unwrap();
        config.data_dir = dir.to_path_buf();
        crate::db::open(dir).unwrap();
        let console = ConsoleConfig {
            enabled: true,
            insecure_loopback_http: true,
            ..ConsoleConfig::default()
        };
        State::new(config, console, Arc::new(Readiness::default())).unwrap()
    }

    fn set_cookie(r: &Response, name: &str) -> Option<String> {
        r.headers_named("Set-Cookie")
            .find_map(|c| c.strip_prefix(&format!("{name}=")))
            .map(|rest| rest.split(';').next().unwrap_or("").to_string())
    }

    /// Log in through the form; the session cookie.
    fn log_in(state: &State, name: &str, password: &str) -> Response {
        let form = handle(state, &Request::new("GET", "/login", LOCAL));
        let token = set_cookie(&form, LOGIN_COOKIE).unwrap();
        handle(
            state,
            &Request::new("POST", "/login", LOCAL)
                .with_header("Content-Type", "application/x-www-form-urlencoded")
                .with_header("Cookie", &format!("{LOGIN_COOKIE}={token}"))
                .with_body(format!("csrf={token}&user={name}&password={password}").as_bytes()),
        )
    }

    fn csrf_of(html: &[u8]) -> String {
        let html = String::from_utf8_lossy(html);
        let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
        html[at..at + 64].to_string()
    }

    #[test]
    fn pages_need_a_session_posts_need_the_csrf_token_and_rollback_needs_an_admin() {
        let dir = tempfile::tempdir().unwrap();
        users::set_password(dir.path(), "vera", Role::Viewer, "viewer password 1").unwrap();
        let state = state(dir.path());

        let r = handle(&state, &Request::new("GET", "/queues", LOCAL));
        assert_eq!((r.status, r.header("Location")), (303, Some("/login")));
        let r = log_in(&state, "vera", "wrong password 1");
        assert_eq!(r.status, 401);
        let r = log_in(&state, "vera", "viewer password 1");
        assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
        let session = set_cookie(&r, SESSION_COOKIE).unwrap();
        let cookie = format!("{SESSION_COOKIE}={session}");
        assert!(r
            .headers_named("Set-Cookie")
            .any(|c| c.contains("Secure; HttpOnly; SameSite=Strict")));

        let page = handle(
            &state,
            &Request::new("GET", "/queues", LOCAL).with_header("Cookie", &cookie),
        );
        assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
        let csrf = csrf_of(&page.body);
        for (target, status) in [
            ("/studies?limit=x", 400),
            ("/studies?limit=%zz", 400),
            ("/results/9", 404),
            ("/results/x/slices/1.png", 404),
            ("/studies/zz", 404),
            ("/nothing", 404),
        ] {
            let r = handle(
                &state,
                &Request::new("GET", target, LOCAL).with_header("Cookie", &cookie),
            );
            assert_eq!(r.status, status, "{target}");
        }
        let post = |body: &str| {
            handle(
                &state,
                &Request::new("POST", "/models/head-ct-ich/rollback", LOCAL)
                    .with_header("Cookie", &cookie)
                    .with_header("Content-Type", "application/x-www-form-urlencoded")
                    .with_body(body.as_bytes()),
            )
        };
        assert_eq!(post("to=global").status, 403, "no CSRF token");
        assert_eq!(
            post(&format!("csrf={csrf}&to=global")).status,
            403,
            "a viewer"
        );
        let forged = handle(
            &state,
            &Request::new("GET", "/", LOCAL)
                .with_header("Cookie", &format!("{SESSION_COOKIE}={}", "ab".repeat(32))),
        );
        assert_eq!(
            (forged.status, forged.header("Location")),
            (303, Some("/login"))
        );
        // A changed password ends the session.
        users::set_password(dir.path(), "vera", Role::Viewer, "viewer password 2").unwrap();
        let r = handle(
            &state,
            &Request::new("GET", "/", LOCAL).with_header("Cookie", &cookie),
        );
        assert_eq!(r.status, 303);
    }
}
