//! `coordinator fold`: constant and static-shape subgraphs folded into initializers
//! ([`hone_graph::Graph::constant_fold_shapes`]), unused values dropped, and the result written
//! only if tract accepts it. A post-training pass that needs no data.

use std::path::{Path, PathBuf};

use hone_graph::Graph;

/// Arguments of `coordinator fold`.
#[derive(Debug, clap::Args)]
pub struct FoldArgs {
    /// The ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the folded model.
    #[arg(long)]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Folds `model` into `out`; the JSON summary.
pub fn fold(model: &Path, out: &Path) -> anyhow::Result<serde_json::Value> {
    let mut g = Graph::load(model)?;
    let nodes_before = g.node_protos().len();
    let report = g.constant_fold_shapes()?;
    let pruned = g.prune_unused();
    let skipped: Vec<serde_json::Value> =
        report.skipped.iter().map(|(n, why)| serde_json::json!({"node": n, "why": why})).collect();
    g.save_gated(out, &Default::default())?;
    Ok(serde_json::json!({
        "model": model,
        "out": out,
        "nodes_before": nodes_before,
        "nodes_after": g.node_protos().len(),
        "folded_nodes": report.folded_nodes,
        "new_initializers": report.new_initializers,
        "skipped": skipped,
        "removed_nodes": pruned.removed_nodes,
        "removed_initializers": pruned.removed_initializers,
    }))
}

/// Runs `coordinator fold`.
pub async fn run(a: FoldArgs) -> anyhow::Result<i32> {
    let (model, out, json) = (a.model, a.out, a.json);
    let v = super::learn::blocking(move || fold(&model, &out)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} → {}: {} nodes → {} ({} folded, {} skipped)",
            v["model"].as_str().unwrap_or(""),
            v["out"].as_str().unwrap_or(""),
            v["nodes_before"],
            v["nodes_after"],
            v["folded_nodes"].as_array().map_or(0, Vec::len),
            v["skipped"].as_array().map_or(0, Vec::len)
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use hone_graph::{DataType, Dim, Graph, Node, ValueInfo, pb};

    /// `y = Reshape(x, Shape(x))` on a static input: `Shape` folds into an initializer.
    fn shape_chain() -> Graph {
        let dims = vec![Dim::Value(2), Dim::Value(3)];
        let value = |n: &str| ValueInfo::tensor(n, DataType::F32, dims.clone()).to_proto();
        Graph::from_proto(pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: vec![
                    Node::new("shape", "Shape", &["x"], &["s"]).to_proto(),
                    Node::new("reshape", "Reshape", &["x", "s"], &["y"]).to_proto(),
                ],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn fold_removes_the_static_shape_and_writes_a_gated_model() {
        let dir = tempfile::tempdir().unwrap();
        let (model, out) = (dir.path().join("m.onnx"), dir.path().join("folded.onnx"));
        shape_chain().save(&model).unwrap();
        let v = super::fold(&model, &out).unwrap();
        assert_eq!(v["folded_nodes"], serde_json::json!(["shape"]), "{v}");
        assert_eq!((v["nodes_before"].as_u64(), v["nodes_after"].as_u64()), (Some(2), Some(1)));
        let folded = Graph::load(&out).unwrap();
        assert!(folded.initializer("s").is_ok());
        hone_graph::gate::check_with_tract(&std::fs::read(&out).unwrap(), &Default::default())
            .unwrap();
        let err = super::fold(&dir.path().join("missing.onnx"), &out).unwrap_err();
        assert!(format!("{err:#}").contains("missing.onnx"), "{err:#}");
    }
}
