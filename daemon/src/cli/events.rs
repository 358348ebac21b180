//! `lanyard events`: prints the events as they happen, or replays the events stream first.

use std::path::PathBuf;

use futures::StreamExt;
use lanyard::config::Config;

pub(crate) async fn events(
    config: Option<PathBuf>,
    json: bool,
    since: Option<std::time::Duration>,
) -> u8 {
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 64;
        }
    };
    let client = match lanyard::edge::connect(&config.nats).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 1;
        }
    };
    let print = |name: &str, body: &[u8]| {
        let body = String::from_utf8_lossy(body);
        if json {
            println!("{body}");
        } else {
            println!("{}", render_event(name, &body));
        }
    };
    if let Some(since) = since {
        let replay = lanyard::edge::replay_events(
            &client,
            &config.nats.subject_prefix,
            &config.events,
            since,
        )
        .await;
        let mut replay = match replay {
            Ok(replay) => Box::pin(replay),
            Err(error) => {
                eprintln!("lanyard: {error}");
                return 1;
            }
        };
        eprintln!(
            "lanyard: replaying stream {} from {} ago, then following (Ctrl-C to stop)",
            config.events.stream_name,
            humantime::format_duration(since)
        );
        while let Some((name, body)) = replay.next().await {
            print(&name, &body);
        }
        return 0;
    }
    let prefix = &config.nats.subject_prefix;
    let all = lanyard_proto::all_events_subject(prefix);
    let mut events = match client.subscribe(all.clone()).await {
        Ok(events) => events,
        Err(error) => {
            eprintln!("lanyard: cannot subscribe: {error}");
            return 1;
        }
    };
    if let Err(error) = lanyard::edge::round_trip(&client).await {
        eprintln!("lanyard: {error}");
        return 1;
    }
    eprintln!("lanyard: listening on {all} (Ctrl-C to stop)");
    while let Some(message) = events.next().await {
        let name = lanyard_proto::event_name(prefix, message.subject.as_str()).unwrap_or_default();
        print(name, &message.payload);
    }
    0
}

/// `2026-11-22T06:00:00Z user.logged_in user_id=usr_... provider=github ...`
pub(crate) fn render_event(name: &str, body: &str) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(body)
    else {
        return format!("{name} {body}");
    };
    let at = fields
        .get("occurred_at")
        .and_then(|v| v.as_str())
        .unwrap_or("-");
    let rest: Vec<String> = fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "occurred_at" | "type" | "event_id"))
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("{at} {name} {}", rest.join(" "))
}
