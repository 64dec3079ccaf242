//! `weft apply --wait`: follow a change to the sidecars it was sent to, until each ACKs it or
//! one NACKs it, and say which.

use std::future::Future;
use std::time::{Duration, Instant};
use weft::control::wire::{Pushed, SidecarStatus};

/// How a sidecar answered a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It runs the version it was sent.
    Ack,
    /// It refused it, with its reason.
    Nack(String),
    /// Its stream closed before it answered.
    Gone,
    /// It has not answered yet.
    Pending,
}

/// The answer `pushed` has given, as `status` tells it.
pub fn answer(pushed: &Pushed, status: &[SidecarStatus]) -> Answer {
    match status.iter().find(|s| s.id == pushed.id) {
        None => Answer::Gone,
        Some(s) if s.acked == pushed.version => Answer::Ack,
        Some(s) if s.nacked == pushed.version => Answer::Nack(s.nack.clone().unwrap_or_default()),
        Some(s) if !s.connected => Answer::Gone,
        Some(_) => Answer::Pending,
    }
}

/// Waits for every sidecar in `pushed` to answer, reading the control plane's status with
/// `status` (its JSON) and printing each answer; an error if one NACKed, went away, or had not
/// answered within `timeout`.
pub async fn for_answers<F, Fut>(
    status: F,
    pushed: &[Pushed],
    timeout: Duration,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<serde_json::Value>>,
{
    // With replicas, a control plane knows the answers of its own sidecars only.
    let others = "sidecars connected to other control-plane replicas are not waited for \
                  (weft status through each replica shows them)";
    let replicated = |out: &serde_json::Value| out["store"]["kind"] == "postgres";
    if pushed.is_empty() {
        if replicated(&status().await?) {
            println!("no sidecar of this replica runs anything new; {others}");
        } else {
            println!("no sidecar runs anything new: nothing to wait for");
        }
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let (answers, shared_store) = loop {
        let out = status().await?;
        let sidecars: Vec<SidecarStatus> =
            serde_json::from_value(out["sidecars"].clone()).unwrap_or_default();
        let answers: Vec<Answer> = pushed.iter().map(|p| answer(p, &sidecars)).collect();
        let nacked = answers.iter().any(|a| matches!(a, Answer::Nack(_)));
        if nacked || !answers.contains(&Answer::Pending) || Instant::now() >= deadline {
            break (answers, replicated(&out));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut failed = 0;
    for (p, a) in pushed.iter().zip(&answers) {
        let (word, detail) = match a {
            Answer::Ack => ("ACK", String::new()),
            Answer::Nack(reason) => ("NACK", format!(": {reason}")),
            Answer::Gone => (
                "gone",
                " (its stream closed before it answered)".to_string(),
            ),
            Answer::Pending => ("no answer", format!(" within {timeout:?}")),
        };
        if *a != Answer::Ack {
            failed += 1;
        }
        println!("  {} {} {word}{detail}", p.service, p.id);
    }
    if shared_store {
        println!("  ({others})");
    }
    match failed {
        0 => Ok(()),
        n => anyhow::bail!("{n} of {} sidecars did not take the change", pushed.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, acked: &str, nacked: &str, connected: bool) -> SidecarStatus {
        SidecarStatus {
            id: id.into(),
            acked: acked.into(),
            nacked: nacked.into(),
            nack: (!nacked.is_empty()).then(|| "bad".to_string()),
            connected,
            ..SidecarStatus::default()
        }
    }

    #[test]
    fn an_answer_is_for_the_version_sent() {
        let p = Pushed {
            id: "a".into(),
            service: "s".into(),
            version: "v2".into(),
        };
        assert_eq!(answer(&p, &[status("a", "v2", "", true)]), Answer::Ack);
        assert_eq!(
            answer(&p, &[status("a", "v1", "v2", true)]),
            Answer::Nack("bad".into())
        );
        // A NACK of an older version is not this change's answer.
        assert_eq!(
            answer(&p, &[status("a", "v1", "v0", true)]),
            Answer::Pending
        );
        assert_eq!(answer(&p, &[status("a", "v1", "", false)]), Answer::Gone);
        assert_eq!(answer(&p, &[]), Answer::Gone);
    }
}
