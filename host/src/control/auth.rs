//! Credentials: one operator token (the CLI's), and a bootstrap token per service, derived as
//! HMAC-SHA256 of the service name under a secret kept in the data directory, so the control
//! plane issues any number of service tokens without storing them, and a token for `orders`
//! cannot watch as `payments`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator: every API.
    Operator,
    /// A sidecar of this service: its own watch stream, ACKs and artifacts.
    Service(String),
}

/// The keys credentials are checked against.
pub struct Auth {
    operator: String,
    secret: Vec<u8>,
}

impl Auth {
    /// From the operator token and the service-token secret.
    pub fn new(operator: String, secret: &str) -> Self {
        Auth {
            operator,
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, service: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length; the error case cannot occur.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(b"weft service token\0");
        mac.update(service.as_bytes());
        mac
    }

    /// The bootstrap token of a service's sidecars.
    pub fn service_token(&self, service: &str) -> String {
        format!(
            "{service}.{}",
            hex::encode(self.mac(service).finalize().into_bytes())
        )
    }

    /// Who presents `token` (`Authorization: Bearer <token>`), if anyone.
    pub fn check(&self, token: &str) -> Option<Caller> {
        if constant_time_eq(token.as_bytes(), self.operator.as_bytes()) {
            return Some(Caller::Operator);
        }
        let (service, tag) = token.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        // verify_slice compares in constant time.
        self.mac(service)
            .verify_slice(&tag)
            .ok()
            .map(|()| Caller::Service(service.to_string()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_holder_and_nothing_else() {
        let auth = Auth::new("op-token".into(), "secret");
        assert_eq!(auth.check("op-token"), Some(Caller::Operator));
        let payments = auth.service_token("payments");
        assert_eq!(
            auth.check(&payments),
            Some(Caller::Service("payments".into()))
        );
        let forged = payments.replacen("payments", "orders", 1);
        assert_eq!(auth.check(&forged), None, "a token is bound to its service");
        assert_eq!(auth.check("op-token2"), None);
        assert_eq!(auth.check(""), None);
        let other = Auth::new("op-token".into(), "another secret");
        assert_eq!(other.check(&payments), None, "tokens die with the secret");
    }
}
