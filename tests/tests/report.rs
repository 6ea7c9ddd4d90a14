//! The pipeline's HTML report in a real browser: headless Chromium opens the file offline, its
//! screenshot must show each class's chart with the marks drawn in their colours, and its DOM
//! must hold the charts' SVG. `/usr/bin/chromium` (or `HONE_CHROMIUM`) is required: without it
//! the test fails and says how to install it (`scripts/services.sh` does).
//!
//! Set `HONE_REPORT_KEEP=DIR` to keep the report and its screenshot there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coordinator::compare::{Line, cpu_line, default_assumptions};
use coordinator::pipeline::report;
use coordinator::pipeline::result::{
    CandidateRow, ClassResult, Constraints, Figures, PipelineResult, PredictorReport,
};

#[path = "../../coordinator/src/pipeline/report/sample.rs"]
mod sample;

/// How long one Chromium run may take before it is killed and the test fails.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

/// The marker colours of the report's charts (`report.rs`, `mod colour`).
const PLOT: [u8; 3] = [0xf7, 0xf9, 0xfc];
const CANDIDATE: [u8; 3] = [0x4e, 0x79, 0xa7];
const PARENT: [u8; 3] = [0xf2, 0x8e, 0x2b];
const WINNER: [u8; 3] = [0x2c, 0xa0, 0x2c];

fn chromium() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("HONE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        path.is_file(),
        "{} is missing: the report test needs headless Chromium; install it with \
         `apt-get install chromium` (scripts/services.sh does)",
        path.display()
    );
    path
}

/// Runs Chromium headless on `page` with `args`, stdout to `stdout`; kills its whole process
/// group on the way out, and fails the test if it runs past `CHROMIUM_TIMEOUT` or fails.
fn run_chromium(profile: &Path, page: &Path, args: &[String], stdout: &Path) {
    use std::os::unix::process::CommandExt;
    let log = stdout.with_extension("stderr");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--no-pings",
            // Chromium's own background requests (updates, accounts) go nowhere either.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(stdout).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .expect("start chromium");
    let pgid = child.id();
    let kill_group = || {
        // Chromium's helpers (zygote, renderer, GPU) share the group the browser leads.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            kill_group();
            let _ = child.wait();
            panic!(
                "chromium ran past {CHROMIUM_TIMEOUT:?} and was killed; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    kill_group();
    assert!(
        status.success(),
        "chromium failed ({status}); its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// An RGB image.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let file = std::io::BufReader::new(std::fs::File::open(path).expect("the screenshot"));
        let mut decoder = png::Decoder::new(file);
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().expect("a PNG screenshot");
        let mut buf = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
        let info = reader.next_frame(&mut buf).expect("the screenshot's pixels");
        let channels = match info.color_type {
            png::ColorType::Rgba => 4,
            png::ColorType::Rgb => 3,
            other => panic!("unexpected screenshot colour type {other:?}"),
        };
        let (width, height) = (info.width as usize, info.height as usize);
        let rgb = buf[..info.line_size * height]
            .chunks(info.line_size)
            .flat_map(|line| {
                line[..width * channels].chunks(channels).flat_map(|p| [p[0], p[1], p[2]])
            })
            .collect();
        Image { width, height, rgb }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// The plot areas, top to bottom: boxes of rows holding a wide run of the plot's background
    /// (gaps of a few rows, where grid lines cross, are bridged).
    fn plot_areas(&self) -> Vec<Region> {
        let rows: Vec<Option<(usize, usize)>> = (0..self.height)
            .map(|y| {
                let xs: Vec<usize> = (0..self.width).filter(|&x| self.at(x, y) == PLOT).collect();
                (xs.len() >= 150).then(|| (xs[0], xs[xs.len() - 1]))
            })
            .collect();
        let mut areas: Vec<Region> = Vec::new();
        for (y, row) in rows.iter().enumerate() {
            let Some((x0, x1)) = *row else { continue };
            match areas.last_mut() {
                Some(a) if y <= a.y1 + 6 => {
                    a.y1 = y;
                    a.x0 = a.x0.min(x0);
                    a.x1 = a.x1.max(x1);
                }
                _ => areas.push(Region { x0, x1, y0: y, y1: y }),
            }
        }
        areas.retain(|a| a.y1 - a.y0 >= 100 && a.x1 - a.x0 >= 200);
        areas
    }

    fn count(&self, r: &Region, colour: [u8; 3]) -> usize {
        (r.y0..=r.y1)
            .flat_map(|y| (r.x0..=r.x1).map(move |x| (x, y)))
            .filter(|&(x, y)| self.at(x, y) == colour)
            .count()
    }
}

#[derive(Debug, Clone, Copy)]
struct Region {
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
}

#[test]
fn the_report_renders_its_charts_in_a_browser_offline() {
    let result = sample::sample();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    report::write(&result, &page).unwrap();
    let profile = dir.path().join("profile");

    // The DOM as the browser built it: one SVG per class, a dot per measured candidate.
    let dom_path = dir.path().join("dom.html");
    run_chromium(&profile, &page, &["--dump-dom".into()], &dom_path);
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), result.classes.len(), "{dom}");
    let measured: usize = result
        .classes
        .iter()
        .flat_map(|c| &c.candidates)
        .filter(|c| c.status == "measured")
        .count();
    assert_eq!(dom.matches("<circle class=\"cand\"").count(), measured);
    assert_eq!(dom.matches("class=\"winner\"").count(), 1);
    assert!(!dom.contains("<script"));

    // The pixels: each class's plot area shows its marks in their colours.
    let shot = dir.path().join("report.png");
    run_chromium(
        &profile,
        &page,
        &[format!("--screenshot={}", shot.display()), "--window-size=1280,3600".into()],
        &dir.path().join("screenshot.out"),
    );
    if let Ok(keep) = std::env::var("HONE_REPORT_KEEP") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&page, Path::new(&keep).join("report.html")).unwrap();
        std::fs::copy(&shot, Path::new(&keep).join("report.png")).unwrap();
    }
    let image = Image::read(&shot);
    let areas = image.plot_areas();
    assert_eq!(areas.len(), result.classes.len(), "plot areas found: {areas:?}");
    for (area, class) in areas.iter().zip(&result.classes) {
        let (cand, parent, winner) =
            (image.count(area, CANDIDATE), image.count(area, PARENT), image.count(area, WINNER));
        println!(
            "{}: {area:?} candidate {cand} px, parent {parent} px, winner {winner} px",
            class.class
        );
        // A dot's inside is some 60 pixels; the parent's diamond and the winner's star more.
        assert!(cand >= 60 * 3, "{}: {cand} candidate pixels", class.class);
        assert!(parent >= 40, "{}: {parent} parent pixels", class.class);
        if class.winner.is_some() {
            assert!(winner >= 40, "{}: {winner} winner pixels", class.class);
        } else {
            assert_eq!(winner, 0, "{} has no winner but shows one", class.class);
        }
    }
    // Faster is left: on the class with a winner, its star is left of the parent's diamond.
    let area = areas[1];
    let mean_x = |colour| {
        let xs: Vec<usize> = (area.y0..=area.y1)
            .flat_map(|y| (area.x0..=area.x1).map(move |x| (x, y)))
            .filter(|&(x, y)| image.at(x, y) == colour)
            .map(|(x, _)| x)
            .collect();
        xs.iter().sum::<usize>() / xs.len().max(1)
    };
    assert!(mean_x(WINNER) < mean_x(PARENT), "the winner is drawn right of the parent");
}

#[test]
fn a_report_with_hostile_names_stays_inert_in_a_browser() {
    let mut result = sample::sample();
    result.model_name = "<script>document.title='pwned'</script>".into();
    result.classes[0].class = "<img src=x onerror=alert(1)>".into();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("hostile.html");
    report::write(&result, &page).unwrap();
    let dom_path = dir.path().join("dom.html");
    run_chromium(&dir.path().join("profile"), &page, &["--dump-dom".into()], &dom_path);
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    assert!(!dom.contains("<script"), "a script element in the DOM");
    assert!(!dom.contains("<img"), "an img element in the DOM");
    assert!(dom.contains("&lt;script&gt;document.title="), "the name is shown as text");
    assert!(!dom.contains("<title>pwned</title>"));
}
