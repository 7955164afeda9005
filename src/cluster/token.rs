//! Join tokens, in the shape of Swarm's: `MESHTKN-1-<cluster id>-<secret>`.
//!
//! The cluster ID is public: it names the cluster in every gossip message, so
//! agents of two clusters on one underlay ignore each other. The secret is only
//! ever sent to a member when joining, and every member checks it.

use rand::Rng;

const PREFIX: &str = "MESHTKN-1-";
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub cluster_id: String,
    pub secret: String,
}

fn random(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// A random node or object ID, like Swarm's 25-character IDs.
pub fn new_id() -> String {
    random(25)
}

impl Token {
    pub fn generate() -> Token {
        Token {
            cluster_id: random(16),
            secret: random(32),
        }
    }

    pub fn parse(s: &str) -> Result<Token, String> {
        let bad = || {
            "invalid join token: expected MESHTKN-1-<cluster>-<secret> as printed by `meshctl cluster join-token`".to_string()
        };
        let rest = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let (cluster_id, secret) = rest.split_once('-').ok_or_else(bad)?;
        let valid = |p: &str| !p.is_empty() && p.bytes().all(|b| ALPHABET.contains(&b));
        if !valid(cluster_id) || !valid(secret) {
            return Err(bad());
        }
        Ok(Token {
            cluster_id: cluster_id.into(),
            secret: secret.into(),
        })
    }

    /// Compares secrets in time independent of where they differ.
    pub fn matches(&self, other: &Token) -> bool {
        let (a, b) = (self.to_string(), other.to_string());
        a.len() == b.len()
            && a.bytes()
                .zip(b.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.cluster_id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = Token::generate();
        let back = Token::parse(&t.to_string()).unwrap();
        assert!(t.matches(&back));
        assert!(!t.matches(&Token::generate()));
        for bad in [
            "",
            "SWMTKN-1-abc-def",
            "MESHTKN-1-abc",
            "MESHTKN-1-ab!-cd",
            "MESHTKN-1--x",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }
}
