//! The volume builder (`pacs_bridge::volume::build`), the path inference takes from a series'
//! Part 10 files to a `Volume`: the input is one to four files (split at
//! `radiant_fuzz::FILE_SEPARATOR`), written to a temporary folder and built as one series,
//! with limits scaled to fuzz inputs. Seeds cover every transfer syntax we accept.
//!
//! Properties: `build` returns a volume or a typed `VolumeError`, never panics outside its
//! codec panic boundary (`volume::contained`), and never allocates beyond its limits; a volume
//! it returns is consistent (voxel count, one source per slice, finite samples, positive
//! spacing). This target uses `fuzz_nohook!`: a codec panic that `contained` catches is the
//! documented behaviour (a `VolumeError::Decode`), not a crash; any panic that escapes
//! `build` still aborts the run and is recorded as a crash.

use pacs_bridge::volume::{self, Limits};
use std::path::PathBuf;

const LIMITS: Limits = Limits {
    max_file_bytes: 4 << 20,
    max_voxels: 1 << 22,
};

fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let show = radiant_fuzz::show_results();
    afl::fuzz_nohook!(|data: &[u8]| {
        let files = radiant_fuzz::split_files(data, 4);
        let mut paths = Vec::with_capacity(files.len());
        for (i, bytes) in files.iter().enumerate() {
            let path: PathBuf = dir.path().join(format!("{i}.dcm"));
            std::fs::write(&path, bytes).expect("write into the temporary folder");
            paths.push(path);
        }
        let built = volume::build(&paths, &LIMITS);
        if show {
            eprintln!(
                "{:?}",
                built
                    .as_ref()
                    .map(|s| (s.volume.columns, s.volume.rows, s.volume.slices))
            );
        }
        if let Ok(series) = built {
            let v = &series.volume;
            assert_eq!(v.voxels.len(), v.rows * v.columns * v.slices);
            assert!(v.voxels.len() <= LIMITS.max_voxels);
            assert_eq!(series.sources.len(), v.slices);
            assert!(v.voxels.iter().all(|x| x.is_finite()));
            assert!(
                v.spacing.iter().all(|s| *s > 0.0),
                "spacing {:?}",
                v.spacing
            );
        }
        for path in &paths {
            let _ = std::fs::remove_file(path);
        }
    });
}
