//! Warm spares: the operator keeps a `CapacityBuffer` per group, and CA injects its
//! placeholder ("fake") pods into the pods it scales up for
//! (`processors/capacitybuffer/pod_list_processor.go` `Process` appends them to the
//! unschedulable pods). Those that fit the free room of existing nodes are packed there in CA's
//! snapshot (`filterOutSchedulable`), so their nodes look used to the scale-down planner and
//! are kept unless the placeholders fit elsewhere; the others are scaled up for like pending
//! pods. The real scheduler never sees them: a real pod takes the room, and at the next loop
//! the placeholder no longer fits and CA powers another machine on (the buffer is re-filled).
//!
//! Simplified: a group's placeholders go only onto its own nodes (the operator's buffer
//! selects them by the group label), packed first fit in machine order; they are pods of
//! their own shape, never blocked by a drain rule (CA's `--capacity-buffer-pods-safe-to-evict`).
use crate::operator::machine::PowerState;
use crate::sim::engine::Sim;

/// The workload index the scale-down simulation gives a placeholder pod (no real workload).
pub(super) const PLACEHOLDER: u16 = u16::MAX;

/// The placeholders of one loop.
#[derive(Clone, Debug, Default)]
pub(in crate::sim) struct Placeholders {
    /// Per node: the placeholders packed onto it, `(cpu, memory)`.
    pub on_node: Vec<Vec<(u64, u64)>>,
    /// Per group: `(shape, count)` of its placeholders that fit no existing node.
    pub unplaced: Vec<Option<((u64, u64), u32)>>,
}

impl Placeholders {
    pub fn any_unplaced(&self) -> bool {
        self.unplaced.iter().flatten().any(|(_, n)| *n > 0)
    }
}

impl Sim<'_> {
    /// Each group's warm spares in force as `(count, (cpu, memory))`; the shape defaults to the
    /// group's template node (a whole machine, less its DaemonSets).
    fn buffer_shapes(&mut self, ids: &[String]) -> Vec<Option<(u32, (u64, u64))>> {
        let templates = self.templates(ids);
        (0..self.sc.groups.len())
            .map(|g| {
                let w = self.warm_spares[g].as_ref()?;
                let count = u32::try_from(w.count).ok().filter(|&c| c > 0)?;
                let (tc, tm, _) = templates.get(g).copied().flatten()?;
                let cpu = w
                    .cpu
                    .as_ref()
                    .and_then(|q| crate::sim::units::parse_cpu(&q.0))
                    .unwrap_or(tc);
                let mem = w
                    .memory
                    .as_ref()
                    .and_then(|q| crate::sim::units::parse_memory(&q.0))
                    .unwrap_or(tm);
                Some((count, (cpu, mem)))
            })
            .collect()
    }

    /// Packs this loop's placeholders onto the free room of each group's schedulable nodes.
    pub(super) fn place_placeholders(&mut self, ids: &[String]) -> Placeholders {
        let shapes = self.buffer_shapes(ids);
        let sc = self.sc;
        let mut out = Placeholders {
            on_node: vec![Vec::new(); sc.machines.len()],
            unplaced: vec![None; sc.groups.len()],
        };
        for (g, group) in sc.groups.iter().enumerate() {
            let Some((count, (cpu, mem))) = shapes[g] else {
                continue;
            };
            let mut left = count;
            for &m in &group.members {
                let slot = &self.cluster.nodes[m];
                if !slot.schedulable() || self.machines[m].desired != PowerState::On {
                    continue;
                }
                let (mut fc, mut fm, mut fp) = slot.free();
                while left > 0 && fc >= cpu && fm >= mem && fp > 0 {
                    fc -= cpu;
                    fm -= mem;
                    fp -= 1;
                    left -= 1;
                    out.on_node[m].push((cpu, mem));
                }
            }
            out.unplaced[g] = Some(((cpu, mem), left));
        }
        out
    }
}
