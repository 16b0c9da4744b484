//! Where photos live on the web node: `DATA/ID/original`, `DATA/ID/SIZE.jpg` and
//! `DATA/ID/photo.json` (what the gallery shows). Files are written to a temporary name and
//! renamed, so a reader never sees half a file and a crash leaves no torn one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a photo is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Done,
    Failed,
}

/// One size of a processed photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Size {
    pub size: String,
    pub width: u32,
    pub height: u32,
    pub url: String,
}

/// What the gallery knows of a photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Photo {
    pub id: String,
    pub name: String,
    pub bytes: u64,
    pub uploaded_ms: u64,
    pub state: State,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    #[serde(default)]
    pub sizes: Vec<Size>,
    /// Which process made the sizes.
    #[serde(default)]
    pub by: Option<String>,
    /// The secret a thumbnail process shows to fetch the original (never in the gallery's
    /// JSON: `public()` leaves it out).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

impl Photo {
    /// A new upload of `bytes` bytes named `name`, queued, with a fresh id and key.
    pub fn queued(name: String, bytes: u64, uploaded_ms: u64) -> Photo {
        Photo {
            id: new_id(),
            name,
            bytes,
            uploaded_ms,
            state: State::Queued,
            error: None,
            format: None,
            width: 0,
            height: 0,
            sizes: Vec::new(),
            by: None,
            key: new_key(),
        }
    }

    /// The photo as the page may see it: without its key.
    pub fn public(&self) -> Photo {
        Photo {
            key: String::new(),
            ..self.clone()
        }
    }
}

/// The photo store under one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A fresh photo id: 16 hex digits.
pub fn new_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A secret: 128 bits from the operating system's generator as 32 hex digits (fastrand's
/// generator can be predicted from what it gave before).
pub fn new_secret() -> String {
    let mut bits = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bits) {
        // No secret can be made: better no service than guessable keys.
        panic!("the operating system's random generator failed: {e}");
    }
    bits.iter().map(|b| format!("{b:02x}")).collect()
}

/// A photo's secret key: 32 hex digits.
pub fn new_key() -> String {
    new_secret()
}

/// Whether `id` is one of ours (and so safe in a path).
pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Store {
    /// The store at `root`, made if missing.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Store> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Store { root })
    }

    /// The directory of photo `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The file of one size of photo `id`, if both are valid names.
    pub fn size_path(&self, id: &str, size: &str) -> Option<PathBuf> {
        let known = crate::imaging::SIZES.iter().any(|(s, _)| *s == size);
        (valid_id(id) && known).then(|| self.dir(id).join(format!("{size}.jpg")))
    }

    /// Writes `bytes` to `path` whole or not at all.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }

    /// Keeps a new upload: its original and its record, queued.
    pub fn add(&self, photo: &Photo, original: &[u8]) -> std::io::Result<()> {
        let dir = self.dir(&photo.id);
        std::fs::create_dir_all(&dir)?;
        Self::write_atomic(&dir.join("original"), original)?;
        self.save(photo)
    }

    /// Writes a photo's record.
    pub fn save(&self, photo: &Photo) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(photo).map_err(std::io::Error::other)?;
        Self::write_atomic(&self.dir(&photo.id).join("photo.json"), &json)
    }

    /// A photo's record.
    pub fn get(&self, id: &str) -> Option<Photo> {
        if !valid_id(id) {
            return None;
        }
        let bytes = std::fs::read(self.dir(id).join("photo.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The original of photo `id`, when `key` is its secret.
    pub fn original(&self, id: &str, key: &str) -> Option<PathBuf> {
        let photo = self.get(id)?;
        let matches = !photo.key.is_empty()
            && photo.key.len() == key.len()
            && photo
                .key
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        matches.then(|| self.dir(id).join("original"))
    }

    /// The newest `limit` photos, newest first.
    pub fn list(&self, limit: usize) -> Vec<Photo> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut photos: Vec<Photo> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| self.get(e.file_name().to_str()?))
            .collect();
        photos.sort_by(|a, b| b.uploaded_ms.cmp(&a.uploaded_ms).then(b.id.cmp(&a.id)));
        photos.truncate(limit);
        photos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(id: &str, at: u64) -> Photo {
        Photo {
            id: id.into(),
            ..Photo::queued("a.jpg".into(), 3, at)
        }
    }

    #[test]
    fn photos_are_listed_newest_first_and_bad_ids_reach_no_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("store");
        store
            .add(&photo("00000000000000aa", 1), b"abc")
            .expect("add");
        store
            .add(&photo("00000000000000bb", 2), b"abc")
            .expect("add");
        let ids: Vec<String> = store.list(10).into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["00000000000000bb", "00000000000000aa"]);
        assert!(store.get("../../etc/passwd").is_none());
        assert!(store.size_path("00000000000000aa", "../x").is_none());
        assert!(store.size_path("..", "small").is_none());
        assert!(store.size_path("00000000000000aa", "small").is_some());
    }
}
