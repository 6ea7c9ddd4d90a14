//! Campaign progress on stderr: one bar per device on a terminal, plain lines otherwise.

use crate::api::CampaignView;

/// Progress: one bar per device on a terminal, plain lines otherwise.
pub(super) struct ProgressView {
    tty: bool,
    multi: Option<indicatif::MultiProgress>,
    bars: std::collections::BTreeMap<String, indicatif::ProgressBar>,
    last_plain: String,
}

impl ProgressView {
    pub(super) fn new(tty: bool) -> ProgressView {
        ProgressView {
            tty,
            multi: tty.then(indicatif::MultiProgress::new),
            bars: Default::default(),
            last_plain: String::new(),
        }
    }

    pub(super) fn update(&mut self, view: &CampaignView) {
        if let Some(multi) = &self.multi {
            let mut per_device: std::collections::BTreeMap<&str, (u64, u64, String)> =
                Default::default();
            for l in &view.lines {
                let e = per_device.entry(l.device.as_str()).or_default();
                e.1 += 1;
                if l.state == "done" || l.state == "failed" {
                    e.0 += 1;
                } else if l.state != "queued" && e.2.is_empty() {
                    e.2 = format!("{} {}", l.state, l.model);
                }
            }
            for (device, (done, total, current)) in per_device {
                let bar = self.bars.entry(device.to_string()).or_insert_with(|| {
                    let b = multi.add(indicatif::ProgressBar::new(total));
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix:>20} [{bar:30}] {pos}/{len} {msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    b.set_prefix(device.to_string());
                    b
                });
                bar.set_position(done);
                bar.set_message(current);
            }
        } else {
            let p = &view.progress;
            let line = format!(
                "campaign {}: {}/{} done, {} failed, {} running, {} queued",
                view.id,
                p.done,
                p.total,
                p.failed,
                p.running + p.dispatched,
                p.queued
            );
            if line != self.last_plain {
                eprintln!("{line}");
                self.last_plain = line;
            }
        }
    }

    pub(super) fn finish(&mut self) {
        if self.tty {
            for bar in self.bars.values() {
                bar.finish();
            }
        }
    }
}
