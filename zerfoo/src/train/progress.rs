//! Progress display: an `indicatif` bar on a terminal, a plain line every few
//! steps otherwise (CI logs), or nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::metrics::StepMetrics;

/// How a run shows its progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// A bar when stderr is a terminal, lines otherwise.
    #[default]
    Auto,
    /// A progress bar on stderr.
    Bar,
    /// A line on stderr every `log_every` steps and at each evaluation.
    Lines,
    /// Nothing (tests).
    Quiet,
}

pub(crate) struct Reporter {
    mode: Progress,
    bar: Option<ProgressBar>,
    every: u64,
    start: u64,
    max_steps: u64,
    tok_per_s: Option<f64>,
}

impl Reporter {
    pub(crate) fn new(mode: Progress, start: u64, max_steps: u64, every: u64) -> Self {
        let mode = match mode {
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bar,
            Progress::Auto => Progress::Lines,
            m => m,
        };
        let bar = (mode == Progress::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(max_steps), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {msg} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(start);
            bar
        });
        Reporter {
            mode,
            bar,
            every: every.max(1),
            start,
            max_steps,
            tok_per_s: None,
        }
    }

    /// Reports a finished step.
    pub(crate) fn step(&mut self, m: &StepMetrics) {
        // a smoothed throughput: single steps are noisy
        if m.tokens_per_s.is_finite() {
            self.tok_per_s = Some(match self.tok_per_s {
                Some(t) => 0.9 * t + 0.1 * m.tokens_per_s,
                None => m.tokens_per_s,
            });
        }
        let tps = self.tok_per_s.unwrap_or(f64::NAN);
        match self.mode {
            Progress::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(m.step);
                    bar.set_message(format!(
                        "loss {:.4} | lr {:.2e} | {} tok/s",
                        m.train_loss,
                        m.lr,
                        human(tps)
                    ));
                    if let Some(v) = m.val_loss {
                        bar.println(line(m, self.max_steps, tps, v));
                    }
                }
            }
            Progress::Lines => {
                if m.val_loss.is_some()
                    || m.step % self.every == 0
                    || m.step == self.start + 1
                    || m.step == self.max_steps
                {
                    eprintln!(
                        "{}",
                        line(m, self.max_steps, tps, m.val_loss.unwrap_or(f64::NAN))
                    );
                }
            }
            Progress::Quiet | Progress::Auto => {}
        }
    }

    /// Prints a notice (checkpoint saved, stopped) above the bar.
    pub(crate) fn note(&self, text: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(text),
            (None, Progress::Lines) => eprintln!("{text}"),
            _ => {}
        }
    }

    /// Ends the display; `complete` is false when the run stopped early
    /// (the bar then stays where it was).
    pub(crate) fn finish(&self, complete: bool) {
        if let Some(bar) = &self.bar {
            if complete {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }
}

fn line(m: &StepMetrics, max_steps: u64, tps: f64, val: f64) -> String {
    let val = if val.is_nan() {
        String::new()
    } else {
        format!(" | val {val:.4}")
    };
    format!(
        "step {}/{} | loss {:.4}{val} | lr {:.2e} | {} tok/s | {}",
        m.step,
        max_steps,
        m.train_loss,
        m.lr,
        human(tps),
        clock(m.elapsed)
    )
}

/// `12.3k`, `4.56M`.
fn human(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// `1h02m03s`, `2m05s`, `7.1s`.
fn clock(secs: f64) -> String {
    if !secs.is_finite() {
        return "-".into();
    }
    let s = secs as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{secs:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_560_000.0), "4.56M");
        assert_eq!(human(f64::NAN), "-");
        assert_eq!(clock(3723.0), "1h02m03s");
        assert_eq!(clock(125.0), "2m05s");
        assert_eq!(clock(7.14), "7.1s");
    }
}
