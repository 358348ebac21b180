//! `lanyard store copy`: copies one store into another, empty one.

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
