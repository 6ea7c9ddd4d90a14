//! The repeated blocks of a graph (a transformer's layers), found from node names, and students
//! that keep a subset of them.
//!
//! Exporters name a layer's nodes after its module path: `/encoder/layer.3/attention/...`
//! (PyTorch), `blk.3`, `layers.3`, `h.3`, `block_3`. A node belongs to block `i` when a segment
//! of its name (split at `/` and `.`) is one of [`BLOCK_WORDS`] followed by the number `i`. A
//! block must have exactly one value leaving it (its output on the residual stream); its input
//! on that stream is the value it reads where the next block reads this block's output (the
//! same node, with the number replaced, and the same input slot). Nothing is guessed: a graph
//! whose blocks do not fit this shape is refused with the reason.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context as _, bail};
use hone_graph::Graph;

/// The words that name a repeated block in node names.
pub const BLOCK_WORDS: &[&str] = &["layer", "layers", "h", "block", "blocks", "blk"];

/// One block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Its number in the node names.
    pub index: usize,
    /// Its nodes' names.
    pub nodes: Vec<String>,
    /// The value it reads on the residual stream (empty for a model of one block).
    pub entry: String,
    /// The one value leaving it.
    pub exit: String,
    /// Outputs of its `Softmax` nodes (the attention maps), in graph order.
    pub attention: Vec<String>,
}

/// A graph's blocks, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocks {
    /// The blocks, by increasing index (0, 1, … without gaps); at least one.
    pub blocks: Vec<Block>,
}

/// `(block, role)` of a node name: the block number and the name with it replaced by `#`.
fn block_of(name: &str) -> Option<(usize, String)> {
    let bytes = name.as_bytes();
    let mut start = 0;
    let mut segments = Vec::new();
    for (i, &b) in bytes.iter().enumerate().chain(std::iter::once((bytes.len(), &b'/'))) {
        if b == b'/' || b == b'.' || b == b'_' {
            segments.push((start, i));
            start = i + 1;
        }
    }
    for w in segments.windows(2) {
        let (word, num) = (&name[w[0].0..w[0].1], &name[w[1].0..w[1].1]);
        if BLOCK_WORDS.contains(&word.to_ascii_lowercase().as_str())
            && !num.is_empty()
            && num.bytes().all(|c| c.is_ascii_digit())
            && let Ok(ix) = num.parse::<usize>()
        {
            let role = format!("{}#{}", &name[..w[1].0], &name[w[1].1..]);
            return Some((ix, role));
        }
    }
    None
}

impl Blocks {
    /// The blocks of `graph`. Fails when there are none, when their numbers have gaps,
    /// or when a block has other than one value leaving it.
    pub fn find(graph: &Graph) -> anyhow::Result<Blocks> {
        let nodes = graph.node_protos();
        let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut roles: Vec<Option<String>> = vec![None; nodes.len()];
        for (ix, n) in nodes.iter().enumerate() {
            if let Some((b, role)) = block_of(&n.name) {
                members.entry(b).or_default().push(ix);
                roles[ix] = Some(role);
            }
        }
        if members.is_empty() {
            bail!(
                "found no repeated blocks in the node names (looked for {}): students with \
                 fewer layers, and layer-wise losses, need a model whose layers are named",
                BLOCK_WORDS.iter().map(|w| format!("`{w}.N`")).collect::<Vec<_>>().join(", ")
            );
        }
        let count = members.len();
        if members.keys().copied().ne(0..count) {
            bail!("block numbers {:?} are not 0..{count}", members.keys().collect::<Vec<_>>());
        }
        let inits: HashSet<&str> = graph.initializer_names().into_iter().collect();
        let outputs: HashSet<String> = graph.outputs().into_iter().map(|o| o.name).collect();
        let mut exits = Vec::with_capacity(count);
        let mut externals: Vec<Vec<(usize, usize, String)>> = Vec::with_capacity(count);
        for (&b, ixs) in &members {
            let inside: HashSet<usize> = ixs.iter().copied().collect();
            let produced: HashSet<&str> =
                ixs.iter().flat_map(|&i| nodes[i].output.iter().map(String::as_str)).collect();
            let mut leaving: Vec<&str> = produced
                .iter()
                .copied()
                .filter(|v| !v.is_empty())
                .filter(|v| {
                    outputs.contains(*v) || graph.consumers(v).iter().any(|c| !inside.contains(c))
                })
                .collect();
            leaving.sort_unstable();
            if leaving.len() != 1 {
                bail!(
                    "block {b} has {} values leaving it ({}); a block must hand exactly one \
                     value to the rest of the graph",
                    leaving.len(),
                    leaving.join(", ")
                );
            }
            exits.push(leaving[0].to_owned());
            // (node, slot, value) of every read from outside the block.
            let mut ext = Vec::new();
            for &i in ixs {
                for (slot, v) in nodes[i].input.iter().enumerate() {
                    if !v.is_empty()
                        && !produced.contains(v.as_str())
                        && !inits.contains(v.as_str())
                    {
                        ext.push((i, slot, v.clone()));
                    }
                }
            }
            externals.push(ext);
        }
        // The entry roles: where block 1 reads block 0's exit. A single block's entry is not
        // known (nothing to compare it with), and it is left empty.
        let entry_roles: HashSet<(String, usize)> = externals
            .get(1)
            .into_iter()
            .flatten()
            .filter(|(_, _, v)| *v == exits[0])
            .filter_map(|(i, slot, _)| roles[*i].clone().map(|r| (r, *slot)))
            .collect();
        if count > 1 && entry_roles.is_empty() {
            bail!(
                "block 1 does not read block 0's output `{}`: the blocks are not a stack",
                exits[0]
            );
        }
        let mut blocks = Vec::with_capacity(count);
        for (b, ixs) in members {
            let mut candidates: HashSet<&str> = externals[b]
                .iter()
                .filter(|(i, slot, _)| {
                    roles[*i].as_ref().is_some_and(|r| entry_roles.contains(&(r.clone(), *slot)))
                })
                .map(|(_, _, v)| v.as_str())
                .collect();
            if count == 1 {
                candidates.clear();
                candidates.insert("");
            } else if candidates.len() != 1 {
                bail!(
                    "block {b}: cannot tell its input on the residual stream ({} candidates)",
                    candidates.len()
                );
            }
            let entry = candidates.into_iter().next().expect("one").to_owned();
            if b > 0 && entry != exits[b - 1] {
                bail!("block {b} reads `{entry}`, not block {}'s output `{}`", b - 1, exits[b - 1]);
            }
            let attention = ixs
                .iter()
                .filter(|&&i| nodes[i].op_type == "Softmax")
                .map(|&i| nodes[i].output[0].clone())
                .collect();
            blocks.push(Block {
                index: b,
                nodes: ixs.iter().map(|&i| nodes[i].name.clone()).collect(),
                entry,
                exit: exits[b].clone(),
                attention,
            });
        }
        Ok(Blocks { blocks })
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there are none (never, for a found stack).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Which of `total` blocks a student of `count` keeps: the first and the last, the rest
/// evenly spaced between (`round(i·(total−1)/(count−1))`); one block keeps block 0, the one
/// next to the embeddings.
pub fn spread(count: usize, total: usize) -> Vec<usize> {
    match count {
        0 => Vec::new(),
        1 => vec![0],
        c if c >= total => (0..total).collect(),
        c => (0..c).map(|i| ((i * (total - 1)) as f64 / (c - 1) as f64).round() as usize).collect(),
    }
}

/// A copy of `graph` keeping only the blocks in `keep` (by index): each dropped block's readers
/// read its input instead, and its nodes and the initializers only it used are removed.
pub fn keep_blocks(graph: &Graph, keep: &[usize]) -> anyhow::Result<Graph> {
    let blocks = Blocks::find(graph)?;
    if blocks.len() < 2 {
        bail!("the model has one layer: there is none to drop");
    }
    let keep: HashSet<usize> = keep.iter().copied().collect();
    if keep.is_empty() {
        bail!("a student keeps at least one block");
    }
    if let Some(b) = keep.iter().find(|&&b| b >= blocks.len()) {
        bail!("block {b} does not exist: the model has {} blocks", blocks.len());
    }
    let mut g = graph.clone();
    // The value now flowing where each block's output was.
    let mut stream: HashMap<String, String> = HashMap::new();
    let resolve = |stream: &HashMap<String, String>, v: &str| {
        stream.get(v).cloned().unwrap_or_else(|| v.to_owned())
    };
    let mut dropped_nodes = Vec::new();
    for b in &blocks.blocks {
        if keep.contains(&b.index) {
            continue;
        }
        let input = resolve(&stream, &b.entry);
        stream.insert(b.exit.clone(), input);
        dropped_nodes.extend(b.nodes.iter().cloned());
    }
    let names: Vec<&str> = dropped_nodes.iter().map(String::as_str).collect();
    g.remove_nodes(&names).context("removing the dropped blocks")?;
    for b in &blocks.blocks {
        if let Some(to) = stream.get(&b.exit) {
            if g.outputs().iter().any(|o| o.name == b.exit) {
                // A graph output keeps its name: an `Identity` now produces it.
                let node = hone_graph::Node::new(
                    &format!("{}/bypass", b.exit),
                    "Identity",
                    &[to.as_str()],
                    &[b.exit.as_str()],
                );
                g.insert_nodes([node]).context("bypassing a dropped block")?;
            } else {
                g.replace_uses(&b.exit, to).context("rewiring around a dropped block")?;
            }
        }
    }
    g.prune_unused();
    g.validate().context("the student graph")?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_numbers_and_roles_come_from_node_names() {
        assert_eq!(
            block_of("/model/model.0/auto_model/encoder/layer.2/output/Add"),
            Some((2, "/model/model.0/auto_model/encoder/layer.#/output/Add".into()))
        );
        assert_eq!(block_of("blk.11.attn_q"), Some((11, "blk.#.attn_q".into())));
        assert_eq!(block_of("layers_3/mlp/MatMul"), Some((3, "layers_#/mlp/MatMul".into())));
        assert_eq!(block_of("/model/model.0/pooler/Add"), None);
        assert_eq!(block_of("layer.x/Add"), None);
    }

    #[test]
    fn spread_keeps_the_ends_and_spaces_the_rest() {
        assert_eq!(spread(1, 6), vec![0]);
        assert_eq!(spread(2, 3), vec![0, 2]);
        assert_eq!(spread(3, 6), vec![0, 3, 5]);
        assert_eq!(spread(8, 6), vec![0, 1, 2, 3, 4, 5]);
    }
}
