//! Trains the envelope's zstd dictionary from summaries of the shipped
//! condition-monitoring configuration and writes it where the gateway
//! embeds it:
//!
//!   cargo run -p sensor-gateway-e2e --example train-dict [-- OUTPUT]
//!
//! OUTPUT defaults to `gateway/dict/summaries-v1.zdict`. The samples are
//! every record of 30 simulated minutes of 20 machines (seed 1; the
//! bandwidth measurement uses another seed). Training is deterministic, so
//! the same sources give the same dictionary and id. A new dictionary
//! replaces the shipped one only with a new file name (`-v2`) and
//! the old id kept decodable: see docs/envelope.md.

use sensor_gateway_e2e::workload;

/// Dictionary size: larger ones gain little on summaries and cost memory
/// on every gateway and consumer.
const DICT_BYTES: usize = 16 * 1024;

fn main() -> anyhow::Result<()> {
    let out = std::env::args().nth(1).map_or_else(
        || sensor_gateway_e2e::repo_root().join("gateway/dict/summaries-v1.zdict"),
        Into::into,
    );
    let w = workload::condition_monitoring(20, 30 * 60, 1);
    let samples: Vec<&[u8]> = w.records.iter().map(|r| r.payload.as_slice()).collect();
    let dict = zstd::dict::from_samples(&samples, DICT_BYTES)?;
    std::fs::write(&out, &dict)?;
    println!(
        "{} samples, dictionary of {} bytes, id {}, written to {}",
        samples.len(),
        dict.len(),
        zstd::zstd_safe::get_dict_id_from_dict(&dict).map_or(0, |id| id.get()),
        out.display()
    );
    Ok(())
}
