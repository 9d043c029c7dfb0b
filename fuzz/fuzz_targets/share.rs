//! Share parsing and recovery: a hostile share file must be refused or, if
//! it parses, must never rebuild a key other than the one it names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitsign::keys::shamir::{self, KeyShare, ShareY, Slot};
use splitsign::keys::share_format;

fuzz_target!(|data: &[u8]| {
    let Ok(share) = share_format::decode_file(data) else {
        return;
    };
    // Pair it with a database share of the key it claims to belong to.
    let other = KeyShare {
        deployment: share.deployment.clone(),
        kid: share.kid.clone(),
        generation: share.generation,
        slot: if share.slot == Slot::Database { Slot::File } else { Slot::Database },
        alg: share.alg,
        public_key: share.public_key,
        y: ShareY::from_slice(&[7u8; 32]).unwrap(),
    };
    if let Ok(key) = shamir::recover(&share, &other) {
        assert_eq!(key.public_key(), share.public_key);
        if let Some(alg) = share.alg {
            assert_eq!(key.key_type(), alg.key_type());
        }
    }
});
