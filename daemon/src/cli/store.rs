//! `lanyard store copy`: copies one store into another, empty one. `lanyard store
//! forget-pending`: deletes the previous version's pending logins once none can finish.
//! `lanyard store reindex`: indexes the session families by user again.

use std::path::PathBuf;

use lanyard::config::Config;

use crate::StoreArg;

/// `lanyard store copy`: exit 0 when copied, 64 for a bad config or arguments, 1 when a
/// store cannot be opened or the target is not empty.
pub(crate) async fn copy_store(config: Option<PathBuf>, from: StoreArg, to: StoreArg) -> u8 {
    use lanyard::config::StoreKind;
    if from == to {
        eprintln!("lanyard: --from and --to name the same store");
        return 64;
    }
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 64;
        }
    };
    let kind = |arg| match arg {
        StoreArg::Sled => StoreKind::Sled,
        StoreArg::Jetstream => StoreKind::Jetstream,
    };
    let client = match lanyard::edge::connect(&config.nats).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 1;
        }
    };
    let started = std::time::Instant::now();
    let open = |arg| lanyard::open_store_kind(&config, kind(arg), &client);
    let source = match open(from).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!(
                "lanyard: cannot open the source ({error}); is a daemon still running on it?"
            );
            return 1;
        }
    };
    let snapshot = match source.export().await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            eprintln!("lanyard: cannot read the source: {error}");
            return 1;
        }
    };
    drop(source);
    let target = match open(to).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("lanyard: cannot open the target: {error}");
            return 1;
        }
    };
    if let Err(error) = target.import(&snapshot).await {
        eprintln!("lanyard: cannot write the target: {error}");
        return 1;
    }
    if let Err(error) = target.flush().await {
        eprintln!("lanyard: cannot flush the target: {error}");
        return 1;
    }
    println!(
        "copied {} from {from:?} to {to:?} in {:.1} s",
        snapshot.counts(),
        started.elapsed().as_secs_f64()
    );
    0
}

/// `lanyard store forget-pending`: exit 0 when nothing of the previous version's pending
/// logins is left, 64 for a bad config, 1 when the store cannot be opened or some of them
/// may still finish.
pub(crate) async fn forget_pending(config: Option<PathBuf>) -> u8 {
    let store = match open_configured(config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.forget_previous_logins(lanyard::sessions::now()).await {
        Ok(expired) => {
            println!(
                "no pending login of the previous version is left ({expired} expired ones deleted)"
            );
            0
        }
        Err(error) => {
            eprintln!("lanyard: {error}");
            1
        }
    }
}

/// `lanyard store reindex`: exit 0 once every session family is in its user's index, 64 for
/// a bad config, 1 when the store cannot be opened or written.
pub(crate) async fn reindex(config: Option<PathBuf>) -> u8 {
    let store = match open_configured(config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.index_sessions().await {
        Ok(count) => {
            println!("indexed {count} session families by user");
            0
        }
        Err(error) => {
            eprintln!("lanyard: {error}");
            1
        }
    }
}

/// The configured store, or the exit code for why not (64: the config; 1: the store).
async fn open_configured(
    config: Option<PathBuf>,
) -> Result<std::sync::Arc<dyn lanyard::store::Store>, u8> {
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return Err(64);
        }
    };
    // sled needs no NATS server (and its daemon stopped); JetStream needs the server.
    let opened = match config.store {
        lanyard::config::StoreKind::Sled => lanyard::store::SledStore::open(&config.data_dir)
            .map(|store| std::sync::Arc::new(store) as std::sync::Arc<dyn lanyard::store::Store>)
            .map_err(|e| e.to_string()),
        lanyard::config::StoreKind::Jetstream => match lanyard::edge::connect(&config.nats).await {
            Ok(client) => lanyard::open_store_kind(&config, config.store, &client)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        },
    };
    opened.map_err(|error| {
        eprintln!("lanyard: cannot open the store ({error}); is a daemon running on it?");
        1
    })
}
