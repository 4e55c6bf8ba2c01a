//! Scaling: the Step 3 batch of sleeping tasks through 1 and 5 `scalable_processor`
//! members, and through one member working on 5 tasks at once.
//!
//! `load_generator --wait --json` publishes the batch and measures the makespan, from the
//! first publish to the last completion report. The ideal is what equal shares would
//! take: ceil(tasks / slots) × the mean task time the workers reported, where slots is
//! members × concurrency. The server gives each task to a member at random, so with five
//! members the shares are uneven and the ratio stays above 1.

use anyhow::Context;

use crate::child::Child;
use crate::publish::run_load_generator;
use crate::stats::{Measured, Row, Sample, Unit};
use crate::{Bench, start_server};

const SUBJECT: &str = "bench.scaling";

/// One group layout to measure.
#[derive(Debug, Clone, Copy)]
struct Layout {
    members: usize,
    concurrency: usize,
}

impl Layout {
    fn case(self) -> String {
        match (self.members, self.concurrency) {
            (1, 1) => "scaling, 1 worker".to_owned(),
            (members, 1) => format!("scaling, {members} workers"),
            (1, concurrency) => format!("scaling, 1 worker, concurrency {concurrency}"),
            (members, concurrency) => {
                format!("scaling, {members} workers, concurrency {concurrency}")
            }
        }
    }
}

const LAYOUTS: [Layout; 3] = [
    Layout {
        members: 1,
        concurrency: 1,
    },
    Layout {
        members: 5,
        concurrency: 1,
    },
    Layout {
        members: 1,
        concurrency: 5,
    },
];

/// Measures each layout `runs` times with the same members.
pub(crate) async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let tasks = bench.config.scaling_tasks;
    let task_time = bench.config.scaling_task_time;
    let mut rows = Vec::new();
    for layout in LAYOUTS {
        let server = start_server();
        let url = server.client_url();
        let mut members = Vec::with_capacity(layout.members);
        for id in 1..=layout.members {
            let args = vec![
                id.to_string(),
                format!("{}ms", task_time.as_millis()),
                "--concurrency".to_owned(),
                layout.concurrency.to_string(),
                "--subject".to_owned(),
                SUBJECT.to_owned(),
                "--server".to_owned(),
                url.clone(),
            ];
            let mut child = Child::spawn(
                format!("scalable_processor {id}"),
                &bench.binary("scalable_processor"),
                &args,
                Some(" done in "),
            )?;
            child
                .wait_for_line("Ready for tasks", bench.config.child_timeout)
                .await?;
            members.push(child);
        }

        let (mut makespans, mut ideals) = (Sample::default(), Sample::default());
        for run in 1..=bench.config.runs {
            tracing::info!(
                members = layout.members,
                concurrency = layout.concurrency,
                run,
                "scaling"
            );
            let prefix = format!("RUN{run}");
            let count = tasks.to_string();
            let figures = run_load_generator(
                bench,
                &[
                    "--server",
                    &url,
                    "--count",
                    &count,
                    "--subject",
                    SUBJECT,
                    "--prefix",
                    &prefix,
                    "--wait",
                    "--wait-timeout",
                    "2m",
                    "--json",
                ],
            )
            .await?;
            let completion = &figures["completion"];
            let makespan = completion["makespan_seconds"]
                .as_f64()
                .context("load_generator's JSON has no completion.makespan_seconds")?;
            let mean_task = completion["mean_task_seconds"]
                .as_f64()
                .context("load_generator's JSON has no completion.mean_task_seconds")?;
            let slots = (layout.members * layout.concurrency) as u32;
            makespans.push(makespan);
            ideals.push(f64::from(tasks.div_ceil(slots)) * mean_task);
        }
        for member in members {
            member.stop(bench.config.child_timeout).await?;
        }

        rows.push(Row {
            case: layout.case(),
            unit: Unit::Seconds,
            ours: Measured::new("makespan", makespans),
            reference: Some(Measured::new("ideal (equal shares)", ideals)),
            note: format!(
                "{tasks} tasks of {} ms through load_generator --wait",
                task_time.as_millis()
            ),
        });
    }
    Ok(rows)
}
