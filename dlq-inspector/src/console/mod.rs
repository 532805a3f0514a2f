//! `dlq-inspector serve`: the operator's web console. An axum server with a JSON API (see
//! docs/CONSOLE.md) and one embedded page that uses it; live updates are Server-Sent Events from
//! the namespace's events exchange. Every action runs the same code as the matching command
//! (`requeue`, `purge`, `breaker`, `degrade`, `producer cancel`/`resume`) and is announced as an
//! `operator.action` event naming who took it.

mod auth;
mod dlq;
mod dlq_api;
mod error;
mod fleet_api;
mod live;
mod pages;
mod runs;
mod runs_api;
mod tokens;
mod tracker;

pub use auth::{COOKIE, CSRF_HEADER, Role};
pub use tokens::{READ_TOKEN_ENV, TOKEN_ENV, Tokens};

use crate::{
    InspectorError,
    announce::{self, Action},
    fleet::Fleet,
};
use axum::{
    Router, middleware,
    routing::{get, post},
};
use clap::Args;
use secflow_common::config::BrokerArgs;
use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

/// `serve`'s flags.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless you say otherwise).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// File holding the operator's token (default: $SECFLOW_CONSOLE_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// File holding the read-only token (default: $SECFLOW_CONSOLE_READ_TOKEN).
    #[arg(long)]
    pub read_token_file: Option<PathBuf>,
    /// Serve without any token (loopback only): anyone who reaches it is an operator.
    #[arg(long)]
    pub no_auth: bool,
}

impl ServeArgs {
    /// The tokens these flags and the process environment give.
    pub fn tokens(&self) -> Result<Tokens, InspectorError> {
        let sources = tokens::TokenSources {
            token_file: self.token_file.as_deref(),
            read_token_file: self.read_token_file.as_deref(),
            no_auth: self.no_auth,
            addr: self.addr,
        };
        Tokens::load(&sources, &|var| std::env::var(var).ok()).map_err(InspectorError::Usage)
    }
}

/// What every handler shares.
pub struct Console {
    broker: BrokerArgs,
    topology: secflow_common::Topology,
    fleet: Fleet,
    runs: secflow_common::runs::RunStore,
    auth: auth::Auth,
    dlq: dlq::DlqCache,
    live: live::Live,
    lock_wait: Duration,
}

type Shared = Arc<Console>;

impl Console {
    /// The namespace's DLQ.
    fn queue(&self) -> String {
        self.topology.dlq()
    }

    /// Announces `a` as an `operator.action` event (taken through the console); whether that
    /// worked, as fields of the action's answer. The action itself stands either way.
    async fn announce(&self, a: Action) -> serde_json::Value {
        let a = a.via("console");
        match announce::announce(&self.broker, &a).await {
            Ok(()) => serde_json::json!({ "event_published": true }),
            Err(e) => {
                tracing::warn!(error = %e, action = %a.action, "console: the change stands, but its event could not be published");
                serde_json::json!({ "event_published": false, "event_error": e })
            }
        }
    }

    /// The answer to a control change: what it did, what is in force, and its announcement.
    async fn finish(&self, a: Action, text: String) -> serde_json::Value {
        let mut out = a.summary();
        out["text"] = serde_json::json!(text);
        dlq_api::merge(&mut out, self.announce(a).await);
        out
    }
}

/// Serves the console on `listener` until `shutdown` resolves. `lock_wait` is how long a DLQ
/// action waits for another inspector. Main and the tests run this same function.
pub async fn serve(
    broker: BrokerArgs,
    tokens: Tokens,
    lock_wait: Duration,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), InspectorError> {
    broker.validate()?;
    let fleet = Fleet::open(&broker)?;
    let runs = secflow_common::runs::RunStore::new(&broker.redis_url, broker.namespace()?.as_str())
        .map_err(|e| InspectorError::Usage(e.to_string()))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let live = live::Live::start(broker.clone(), stop.clone());
    let topology = secflow_common::Topology::new(broker.namespace()?, broker.delivery_limit);
    let console = Arc::new(Console {
        topology,
        broker,
        fleet,
        runs,
        auth: auth::Auth::new(tokens),
        dlq: dlq::DlqCache::default(),
        live,
        lock_wait,
    });
    let app = router(console);
    let stopping = stop.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.cancel();
        })
        .await;
    stop.cancel();
    served.map_err(|e| InspectorError::Usage(format!("the console's server failed: {e}")))
}

/// The whole console: pages, sign-in, and the API behind its gate.
fn router(console: Shared) -> Router {
    let api = Router::new()
        .route("/session", get(pages::session))
        .route("/logout", post(pages::logout))
        .route("/overview", get(fleet_api::overview))
        .route("/runs", get(runs_api::list))
        .route("/runs/{id}", get(runs_api::one))
        .route("/runs/{id}/{action}", post(runs_api::act))
        .route("/dlq", get(dlq_api::list))
        .route("/dlq/export", get(dlq_api::export))
        .route("/dlq/requeue", post(dlq_api::requeue))
        .route("/dlq/purge", post(dlq_api::purge))
        .route("/dlq/task/{id}", get(dlq_api::one))
        .route("/breakers", get(fleet_api::breakers))
        .route("/breakers/{service}", post(fleet_api::breaker))
        .route("/degrade", get(fleet_api::level).post(fleet_api::set_level))
        .route("/workers", get(fleet_api::workers))
        .route("/queues", get(fleet_api::queues))
        .route("/events", get(live::sse))
        .layer(middleware::from_fn_with_state(console.clone(), auth::guard));
    Router::new()
        .route("/", get(pages::index))
        .route("/login", get(pages::login_get).post(pages::login_post))
        .route("/assets/{file}", get(pages::asset))
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .nest("/api", api)
        .layer(middleware::map_response(pages::security_headers))
        .with_state(console)
}

/// Runs `serve` for the command line: binds `args.addr`, stops on Ctrl-C.
pub async fn run(
    broker: &BrokerArgs,
    args: &ServeArgs,
    lock_wait: Duration,
) -> Result<(), InspectorError> {
    let tokens = args.tokens()?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| InspectorError::Usage(format!("cannot listen on {}: {e}", args.addr)))?;
    eprintln!(
        "console: http://{}/ ({})",
        args.addr,
        if tokens.open {
            "no authentication: --no-auth"
        } else {
            "sign in with a console token"
        }
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(broker.clone(), tokens, lock_wait, listener, ctrl_c).await
}
