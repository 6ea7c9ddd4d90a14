//! Accuracy and fidelity, run by tract on batches of [`EvalData`].

use std::collections::HashMap;

use anyhow::{Context as _, anyhow, bail};

use super::data::{EvalBatch, EvalData};
use crate::data::Part;
use crate::eval::tract::{Accuracy, Output, TractPlan, true_inputs};
use hone_graph::{DataType, Graph};

/// How a model's output compares with a reference's on the same inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fidelity {
    /// The model's output compared.
    pub output: String,
    /// The reference's output compared.
    pub reference_output: String,
    /// Share of examples whose argmax is the same in both outputs.
    pub top1_agreement: f64,
    /// Examples whose argmax is the same.
    pub agreements: usize,
    /// Mean cosine similarity of the two outputs' rows (one row per example).
    pub mean_cosine: f64,
    /// Smallest cosine similarity of a row.
    pub min_cosine: f64,
    /// Examples compared.
    pub examples: usize,
    /// The model's accuracy, when the data is labelled and the output has one score per class.
    pub model_accuracy: Option<Accuracy>,
    /// The reference's accuracy, likewise.
    pub reference_accuracy: Option<Accuracy>,
}

/// Which output to read when none is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultOutput {
    /// The first graph output.
    First,
    /// The first graph output declared float (or untyped) of rank 2 (or undeclared rank).
    FirstRank2Float,
}

/// The graph to run and the position of the chosen output among its outputs. A named value
/// that is not a graph output (an intermediate activation) is added as one, on a copy.
fn choose_output(
    model: &Graph,
    wanted: Option<&str>,
    default: DefaultOutput,
) -> anyhow::Result<(Graph, usize)> {
    let outputs = model.outputs();
    let names = || outputs.iter().map(|o| format!("`{}`", o.name)).collect::<Vec<_>>().join(", ");
    if let Some(name) = wanted {
        if let Some(ix) = outputs.iter().position(|o| o.name == name) {
            return Ok((model.clone(), ix));
        }
        if !model.has_value(name) {
            bail!("the model has no value `{name}` (its outputs: {})", names());
        }
        let mut g = model.clone();
        g.add_output(name)?;
        return Ok((g, outputs.len()));
    }
    let ix = match default {
        DefaultOutput::First => (!outputs.is_empty()).then_some(0),
        DefaultOutput::FirstRank2Float => outputs.iter().position(|o| {
            matches!(o.data_type, None | Some(DataType::F32 | DataType::F64 | DataType::F16))
                && o.dims.as_ref().is_none_or(|d| d.len() == 2)
        }),
    };
    let ix = ix.ok_or_else(|| match default {
        DefaultOutput::First => anyhow!("the model has no output"),
        DefaultOutput::FirstRank2Float => anyhow!(
            "the model has no float output of rank 2; name one with --output (its outputs: {})",
            names()
        ),
    })?;
    Ok((model.clone(), ix))
}

/// A model run by tract on batches of any shape: one optimised plan per distinct input shape,
/// made on first use.
pub struct TractRunner {
    graph: Graph,
    order: Vec<String>,
    plans: HashMap<Vec<(String, Vec<usize>)>, TractPlan>,
}

impl TractRunner {
    /// A runner of `graph` (no plan is made before the first batch).
    pub fn new(graph: Graph) -> TractRunner {
        let order = true_inputs(&graph);
        TractRunner { graph, order, plans: HashMap::new() }
    }

    /// Every output of the graph on `batch` (whose inputs are named), in graph output order.
    pub fn run(&mut self, batch: &EvalBatch) -> anyhow::Result<Vec<Output>> {
        let mut ordered = Vec::with_capacity(self.order.len());
        for name in &self.order {
            let t = batch
                .inputs
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| anyhow!("the batch has no input `{name}`"))?;
            ordered.push(t.1.clone());
        }
        let key: Vec<(String, Vec<usize>)> =
            ordered.iter().map(|t| (format!("{:?}", t.dtype()), t.dims().to_vec())).collect();
        if !self.plans.contains_key(&key) {
            let facts: Vec<_> = ordered.iter().map(|t| (t.dtype(), t.dims().to_vec())).collect();
            let plan = TractPlan::new(self.graph.proto(), &facts)
                .with_context(|| format!("tract cannot plan the model for inputs {key:?}"))?;
            self.plans.insert(key.clone(), plan);
        }
        let plan = &self.plans[&key];
        plan.run(&ordered).context("tract failed to run the model")
    }
}

/// The runtime a figure is computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalRuntime {
    /// tract (one plan per input shape).
    #[default]
    Tract,
    /// ONNX Runtime on this many intra-op threads ([`super::ort`]).
    Ort {
        /// Intra-op threads.
        threads: usize,
    },
}

/// A model in the runtime that evaluates it.
pub(crate) enum ModelRunner {
    Tract(Box<TractRunner>),
    Ort(super::ort::OrtModel),
}

impl ModelRunner {
    pub(crate) fn new(graph: Graph, runtime: EvalRuntime) -> anyhow::Result<ModelRunner> {
        Ok(match runtime {
            EvalRuntime::Tract => ModelRunner::Tract(Box::new(TractRunner::new(graph))),
            EvalRuntime::Ort { threads } => {
                ModelRunner::Ort(super::ort::OrtModel::new(&graph, threads)?)
            }
        })
    }

    pub(crate) fn run(&mut self, batch: &EvalBatch) -> anyhow::Result<Vec<Output>> {
        match self {
            ModelRunner::Tract(r) => r.run(batch),
            ModelRunner::Ort(m) => m.run(&batch.inputs),
        }
    }
}

/// The `n` rows of an output whose first axis is the batch.
fn rows<'a>(output: &'a Output, n: usize, name: &str) -> anyhow::Result<Vec<&'a [f32]>> {
    let (shape, values) = output;
    if shape.first() != Some(&n) || n == 0 {
        bail!("output `{name}` has shape {shape:?}: expected {n} rows (one per example)");
    }
    let width = values.len() / n;
    Ok(values.chunks(width).collect())
}

/// Index of the largest value (the first of equals); NaN never wins.
pub(crate) fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
        .0
}

/// Cosine similarity in f64: 1 when both rows are zero, 0 when only one is.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa == 0.0, bb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0),
    }
}

/// Text examples in one fixed length (the longest among them, unless the data sets one), so
/// that tract plans once per batch size.
fn fixed_len(data: &EvalData, examples: &[usize]) -> Option<usize> {
    data.seq_len().or_else(|| data.longest(examples))
}

/// Accuracy of `model` on a part of labelled `data`, run by tract: the argmax of the model's
/// first output (`[N, classes]` scores) against the labels. See [`EvalData::examples`] for
/// `limit`.
pub fn accuracy(
    model: &Graph,
    data: &EvalData,
    part: Part,
    batch_size: usize,
    limit: Option<usize>,
) -> anyhow::Result<Accuracy> {
    accuracy_of(model, data, part, batch_size, limit, None)
}

/// [`accuracy`] on a chosen output (`None`: the first).
pub fn accuracy_of(
    model: &Graph,
    data: &EvalData,
    part: Part,
    batch_size: usize,
    limit: Option<usize>,
    output: Option<&str>,
) -> anyhow::Result<Accuracy> {
    accuracy_in(model, data, part, batch_size, limit, output, EvalRuntime::Tract)
}

/// [`accuracy_of`] computed in `runtime`.
pub fn accuracy_in(
    model: &Graph,
    data: &EvalData,
    part: Part,
    batch_size: usize,
    limit: Option<usize>,
    output: Option<&str>,
    runtime: EvalRuntime,
) -> anyhow::Result<Accuracy> {
    let classes = data.num_classes().ok_or_else(|| {
        anyhow!(
            "data set `{}` has no labels, so there is no accuracy: compare the model with a \
             reference (fidelity) instead",
            data.name()
        )
    })?;
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let feeder = data.feeder(model)?;
    let (graph, out) = choose_output(model, output, DefaultOutput::First)?;
    let name = graph.outputs()[out].name.clone();
    let examples = data.examples(part, limit, None);
    let seq_len = fixed_len(data, &examples);
    let mut runner = ModelRunner::new(graph, runtime)?;
    let mut correct = 0;
    for chunk in examples.chunks(batch_size) {
        let b = feeder.batch(chunk, seq_len)?;
        let outputs = runner.run(&b)?;
        let rows = rows(&outputs[out], chunk.len(), &name)?;
        if rows[0].len() != classes {
            bail!(
                "output `{name}` has {} values per example, but `{}` has {classes} classes: it \
                 is not a classifier of this data (compare it with a reference instead)",
                rows[0].len(),
                data.name()
            );
        }
        let labels = b.labels.as_deref().unwrap_or_default();
        correct += rows.iter().zip(labels).filter(|(r, l)| argmax(r) == **l as usize).count();
    }
    Ok(Accuracy { correct, total: examples.len() })
}

/// Fidelity of `model` against `reference` on the same examples of `data`, both run by tract:
/// top-1 agreement (equal argmax) and the mean and minimum cosine similarity of the chosen
/// output's rows. `output` names the value to compare in both models (a graph output, or any
/// intermediate value, which is then added as an output); by default each model's first float
/// output of rank 2 (`461`, the sentence embedding, for MiniLM; the class scores for
/// classifiers). With labelled data and one score per class, both accuracies come too.
pub fn fidelity(
    model: &Graph,
    reference: &Graph,
    data: &EvalData,
    part: Part,
    batch_size: usize,
    limit: Option<usize>,
    output: Option<&str>,
) -> anyhow::Result<Fidelity> {
    fidelity_in(model, reference, data, part, batch_size, limit, output, EvalRuntime::Tract)
}

/// [`fidelity`] with the model run in `runtime` (the reference always in tract).
#[allow(clippy::too_many_arguments)]
pub fn fidelity_in(
    model: &Graph,
    reference: &Graph,
    data: &EvalData,
    part: Part,
    batch_size: usize,
    limit: Option<usize>,
    output: Option<&str>,
    runtime: EvalRuntime,
) -> anyhow::Result<Fidelity> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let feed_model = data.feeder(model)?;
    let feed_reference = data.feeder(reference).context("the reference model")?;
    let (g_model, out_m) = choose_output(model, output, DefaultOutput::FirstRank2Float)?;
    let (g_reference, out_r) = choose_output(reference, output, DefaultOutput::FirstRank2Float)
        .context("the reference model")?;
    let name_m = g_model.outputs()[out_m].name.clone();
    let name_r = g_reference.outputs()[out_r].name.clone();
    let (mut run_m, mut run_r) =
        (ModelRunner::new(g_model, runtime)?, ModelRunner::new(g_reference, EvalRuntime::Tract)?);
    let examples = data.examples(part, limit, None);
    let seq_len = fixed_len(data, &examples);
    let classes = data.num_classes();
    let (mut agreements, mut cos_sum, mut cos_min) = (0usize, 0f64, f64::INFINITY);
    let (mut hits_m, mut hits_r, mut scored) = (0usize, 0usize, true);
    for chunk in examples.chunks(batch_size) {
        let (bm, br) = (feed_model.batch(chunk, seq_len)?, feed_reference.batch(chunk, seq_len)?);
        let (om, or) = (run_m.run(&bm)?, run_r.run(&br).context("the reference model")?);
        let rows_m = rows(&om[out_m], chunk.len(), &name_m)?;
        let rows_r = rows(&or[out_r], chunk.len(), &name_r).context("the reference model")?;
        if rows_m[0].len() != rows_r[0].len() {
            bail!(
                "the model's `{name_m}` has {} values per example, the reference's `{name_r}` \
                 has {}: they cannot be compared",
                rows_m[0].len(),
                rows_r[0].len()
            );
        }
        for (a, b) in rows_m.iter().zip(&rows_r) {
            agreements += usize::from(argmax(a) == argmax(b));
            let c = cosine(a, b);
            cos_sum += c;
            cos_min = cos_min.min(c);
        }
        scored &= classes == Some(rows_m[0].len());
        if let (true, Some(labels)) = (scored, &bm.labels) {
            for ((a, b), &l) in rows_m.iter().zip(&rows_r).zip(labels) {
                hits_m += usize::from(argmax(a) == l as usize);
                hits_r += usize::from(argmax(b) == l as usize);
            }
        }
    }
    let n = examples.len();
    let acc = |correct| (scored && n > 0).then_some(Accuracy { correct, total: n });
    Ok(Fidelity {
        output: name_m,
        reference_output: name_r,
        top1_agreement: agreements as f64 / n.max(1) as f64,
        agreements,
        mean_cosine: cos_sum / n.max(1) as f64,
        min_cosine: if n == 0 { f64::NAN } else { cos_min },
        examples: n,
        model_accuracy: acc(hits_m),
        reference_accuracy: acc(hits_r),
    })
}
