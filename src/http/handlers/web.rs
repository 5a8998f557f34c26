//! `GET /` and `/ui/…`: the operator's web page. Extract the viewer (who they are, what
//! they may pull) → `crate::web::render` → an HTML response. Every page depends on the
//! viewer, so none is cached; no page runs script (the policy forbids any).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::Req;
use crate::http::error::ApiError;
use crate::http::guard::Caller;
use crate::service::Registry;
use crate::web::{self, Page, Viewer};

const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const CSP: HeaderValue =
    HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self'");

fn html(status: StatusCode, body: String) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HTML);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, CSP);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

pub(super) fn page(reg: &Arc<Registry>, caller: &Caller, req: &Req) -> Result<Response<Bytes>, ApiError> {
    let viewer = Viewer {
        filter: caller.scoped_pull_filter(),
        user: caller.who.user().map(str::to_owned),
        auth_on: caller.auth.enabled(),
    };
    Ok(match web::render(reg, &viewer, &req.path, &req.query)? {
        Page::Html { status, body } => html(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body),
        Page::Login => {
            let body = "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Log in · wharfie\
                        </title></head><body><h1>Log in</h1><p>This registry needs a user name and a password \
                        to show what it holds. <a href=\"/ui/login\">Log in</a>.</p></body></html>";
            let mut r = html(StatusCode::UNAUTHORIZED, body.to_owned());
            super::set(&mut r, header::WWW_AUTHENTICATE, &caller.auth.challenge());
            r
        }
        Page::Redirect(to) => {
            let mut r = html(StatusCode::SEE_OTHER, String::new());
            super::set(&mut r, header::LOCATION, &to);
            r
        }
    })
}
