//! The terminal prompt for manual steps, shared by `books run` and `catalog trigger --run`
//! (each binary includes this file with `#[path = "common/approve.rs"] mod approve;`).

use std::io::BufRead;
use std::path::PathBuf;

use deployer_books::Acknowledgements;
use deployer_core::{Approval, ApprovalRequest, Approver, Event, EventKind};

/// Lines of standard input, read on a thread of their own (so a decision made elsewhere never
/// leaves the program waiting on the terminal); `None` at the end of input.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<Option<String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// Asks on the terminal for a decision on each manual step that waits: `yes` or `no` (anything
/// else asks again), then an optional comment. End of input (or a user who may not decide,
/// with nobody else able to) fails the step without a decision: the job fails and its
/// `on_failure` clean-up runs.
pub async fn prompt(
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    acks: Acknowledgements,
    me: Approver,
    store: Option<PathBuf>,
) {
    let mut lines = None;
    while let Some(e) = events.recv().await {
        let EventKind::ApprovalRequested {
            step,
            message,
            approvers,
            four_eyes,
            started_by,
            target,
            expires_ts,
            ..
        } = e.kind
        else {
            continue;
        };
        let run = e.run_id.as_ref().map(|r| r.to_string()).unwrap_or_default();
        let approval = Approval {
            request: ApprovalRequest {
                run: e.run_id.clone().unwrap_or_default(),
                step: step.clone(),
                message,
                target,
                approvers,
                four_eyes,
                started_by,
                expires_ts,
            },
            requested_ts: e.timestamp,
            decision: None,
        };
        if let Err(refused) = approval.check(&me) {
            match &store {
                Some(path) => println!(
                    "  {refused}\n  waiting for a decision from another process: books approve {run} {step} --store {} --as USER",
                    path.display()
                ),
                None => {
                    println!(
                        "  {refused}\n  and without --store nobody else can decide it: stopping"
                    );
                    acks.abandon(
                        &step,
                        format!("{refused}, and without --store nobody else can decide it"),
                    );
                }
            }
            continue;
        }
        let lines = lines.get_or_insert_with(stdin_lines);
        let approved = loop {
            println!("  approve {step} as {}? [yes/no]", me.name);
            match lines.recv().await.flatten() {
                None => break None,
                Some(l) => match l.trim() {
                    "yes" => break Some(true),
                    "no" => break Some(false),
                    other => println!("  answer yes or no (not {other:?})"),
                },
            }
        };
        let Some(approved) = approved else {
            println!("  no decision (end of input): stopping");
            acks.abandon(&step, "the terminal's input ended");
            continue;
        };
        println!("  comment (optional, Enter for none):");
        let comment = lines.recv().await.flatten();
        acks.decide(&step, me.clone(), approved, comment);
    }
}
