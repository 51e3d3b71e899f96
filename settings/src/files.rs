//! Files: thumbnails, download links, the orphan sweeper and the decode budget.

use std::time::Duration;

use serde::Deserialize;

use crate::{
    de,
    error::Rejection,
    loader::{Check, Section},
};

/// File settings.
#[derive(Debug, Clone, Deserialize)]
pub struct FileSettings {
    /// Thumbnail sizes (longest edge, pixels), ascending.
    #[serde(deserialize_with = "de::sorted_numbers")]
    pub thumbnail_sizes: Vec<u32>,
    /// Lifetime of presigned download URLs.
    #[serde(rename = "file_url_ttl", deserialize_with = "de::duration")]
    pub url_ttl: Duration,
    /// Period of the orphan sweeper.
    #[serde(deserialize_with = "de::duration")]
    pub orphan_sweep_interval: Duration,
    /// Age below which the sweeper leaves objects and uploads alone.
    #[serde(deserialize_with = "de::duration")]
    pub orphan_grace: Duration,
    /// Memory all image decodes of the process share, in bytes.
    #[serde(deserialize_with = "de::size")]
    pub decode_memory: u64,
}

impl Section for FileSettings {
    const EXPECTED: &'static [(&'static str, &'static str)] = &[
        (
            "thumbnail_sizes",
            "1 to 4 comma-separated sizes from 16 to 2048",
        ),
        ("file_url_ttl", "a duration from 1s to 7d"),
        ("orphan_sweep_interval", "a duration such as 1h"),
        ("orphan_grace", "a duration such as 1h"),
        ("decode_memory", "a size from 16MiB, such as 512MiB"),
    ];

    fn validate(&self, _check: &Check<'_>) -> Result<(), Rejection> {
        let sizes = &self.thumbnail_sizes;
        Rejection::unless(
            (1..=4).contains(&sizes.len()) && sizes.iter().all(|n| (16..=2048).contains(n)),
            "thumbnail_sizes",
        )?;
        Rejection::unless(
            self.url_ttl <= Duration::from_secs(7 * 24 * 3600),
            "file_url_ttl",
        )?;
        Rejection::unless(self.decode_memory >= 16 << 20, "decode_memory")
    }
}
