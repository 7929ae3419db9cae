//! `SystemBus` against a real systemd: a user manager (`systemd --user`) of its own, started
//! in a private mount namespace (with a tmpfs `/run` holding `/run/systemd/system`, which the
//! manager checks to believe the host booted with systemd: this machine's PID 1 is not
//! systemd), reached on its user bus (`$XDG_RUNTIME_DIR/bus`, socket-activated by the manager)
//! with the same calls the agent makes on the system bus.
//! A test unit runs `sleep infinity`: start, is-active, restart, reload (refused: no
//! ExecReload), try-reload-or-restart, stop; a unit whose start fails gives the job's result.

use capstan_agent::systemd::{SystemBus, Systemd, SystemdError};

#[path = "common/usermanager.rs"]
mod usermanager;
use usermanager::{UserManager, SERIAL};

/// The main pid of a unit, from the manager's own state (`ExecMainPID` property), through a
/// plain D-Bus call: the test checks that restart made a new process.
async fn main_pid(bus: &zbus::Connection, unit: &str) -> anyhow::Result<u32> {
    let reply = bus
        .call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            "GetUnit",
            &(unit,),
        )
        .await?;
    let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize()?;
    let reply = bus
        .call_method(
            Some("org.freedesktop.systemd1"),
            path.as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.freedesktop.systemd1.Service", "ExecMainPID"),
        )
        .await?;
    let v: zbus::zvariant::OwnedValue = reply.body().deserialize()?;
    Ok(u32::try_from(v)?)
}

#[test]
fn start_restart_reload_stop_a_real_unit() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(m) = UserManager::start()? else { return Ok(()) };
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(lifecycle(&m))
}

async fn lifecycle(m: &UserManager) -> anyhow::Result<()> {
    m.unit("capstan-test-sleep.service", "[Service]\nExecStart=/bin/sleep infinity\n")?;
    m.unit("capstan-test-fails.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")?;
    let sd = m.connect().await?;
    let probe = zbus::connection::Builder::address(m.address().as_str())?.build().await?;

    let unit = "capstan-test-sleep.service";
    assert!(!sd.is_active(unit).await?, "not loaded yet: inactive");
    sd.start(unit).await?;
    assert!(sd.is_active(unit).await?, "active after start");
    let first = main_pid(&probe, unit).await?;
    assert!(first > 0);

    sd.restart(unit).await?;
    assert!(sd.is_active(unit).await?, "active after restart");
    let second = main_pid(&probe, unit).await?;
    assert!(second > 0 && second != first, "restart made a new process: {first} -> {second}");

    // No ExecReload: systemd refuses the reload job and says so.
    match sd.reload(unit).await {
        Err(e @ SystemdError::Call { op: "reload", .. }) => {
            let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(chain.starts_with("reload capstan-test-sleep.service: "), "{chain}");
        }
        other => panic!("reload of a unit without ExecReload: {other:?}"),
    }
    // try-reload-or-restart falls back to a restart for a running unit without reload.
    sd.try_reload_or_restart(unit).await?;
    let third = main_pid(&probe, unit).await?;
    assert!(third != second, "try-reload-or-restart restarted it");

    sd.stop(unit).await?;
    assert!(!sd.is_active(unit).await?, "inactive after stop");
    // ... and leaves a stopped unit stopped.
    sd.try_reload_or_restart(unit).await?;
    assert!(!sd.is_active(unit).await?, "try-reload-or-restart left it stopped");

    // A start whose job fails reports systemd's job result; a bare name gets `.service`.
    match sd.start("capstan-test-fails").await {
        Err(SystemdError::JobFailed { op: "start", unit, result }) => {
            assert_eq!((unit.as_str(), result.as_str()), ("capstan-test-fails", "failed"));
        }
        other => panic!("start of a failing unit: {other:?}"),
    }
    assert!(!sd.is_active("no-such-unit-here.service").await?, "unknown unit: inactive");
    match sd.start("no-such-unit-here.service").await {
        Err(SystemdError::Call { op: "start", .. }) => {}
        other => panic!("start of a unit that does not exist: {other:?}"),
    }
    Ok(())
}

#[test]
fn block_on_drives_a_call_from_sync_code_and_inside_a_runtime() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(m) = UserManager::start()? else { return Ok(()) };
    m.unit("capstan-test-sync.service", "[Service]\nExecStart=/bin/sleep infinity\n")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(m.connect())?;
    let address = m.address();
    let active = capstan_agent::systemd::block_on(|| async {
        let sd = SystemBus::connect_at(&address).await?;
        sd.start("capstan-test-sync.service").await?;
        sd.is_active("capstan-test-sync.service").await
    })?;
    assert!(active);
    // From a thread that drives a runtime (a blocking call there would panic).
    let stopped = rt.block_on(async {
        capstan_agent::systemd::block_on(|| async {
            let sd = SystemBus::connect_at(&address).await?;
            sd.stop("capstan-test-sync.service").await?;
            sd.is_active("capstan-test-sync.service").await
        })
    })?;
    assert!(!stopped);
    // No manager behind the socket: a connect error, not a hang.
    let gone = format!("unix:path={}", m.runtime.path().join("nothing-here").display());
    let e =
        capstan_agent::systemd::block_on(|| async { SystemBus::connect_at(&gone).await.map(drop) })
            .unwrap_err();
    assert!(matches!(e, SystemdError::Connect(_)), "{e:?}");
    Ok(())
}
