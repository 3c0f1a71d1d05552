//! Output files written whole or not at all: to a temporary file beside the target, renamed over it
//! once complete, so a full disk or an interrupted write never leaves a partial file under the name.

use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through `path.tmp-PID` and a rename; on failure the temporary file is
/// removed and `path` is as it was.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_or_leaves_the_target_alone() {
        let dir = std::env::temp_dir().join(format!("hbridge-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        write(&path, b"first").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // A target that cannot be replaced (a folder): an error, no temporary file left behind.
        let folder = dir.join("folder");
        std::fs::create_dir_all(&folder).unwrap();
        assert!(write(&folder, b"x").is_err());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
