//! A fresh, empty directory per input, on tmpfs where there is one (opening a store fsyncs;
//! on tmpfs that costs nothing, so the fuzzer runs thousands of inputs a second).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

fn root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("paho-fuzz-{}", std::process::id()))
}

/// Runs `f` in a new empty directory and removes it afterwards (also when `f` panics).
pub fn with_dir(f: impl FnOnce(&Path)) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = root().join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    let guard = Remove(dir);
    f(&guard.0);
}
