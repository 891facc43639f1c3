//! Property test: whatever a server sends after CONNACK, the client never panics; it either
//! carries on or closes with a reason (0x81, 0x82, 0x93, 0x94, 0x95) or reports the server's
//! DISCONNECT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use paho::Error;
use proptest::prelude::*;

/// A sequence of frames with plausible first bytes and correct lengths but arbitrary bodies,
/// so that many reach the packet parsers and the session engine.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let first = prop_oneof![
        Just(0x30u8),
        Just(0x32),
        Just(0x34),
        Just(0x3B),
        Just(0x40),
        Just(0x50),
        Just(0x62),
        Just(0x70),
        Just(0x90),
        Just(0xB0),
        Just(0xD0),
        Just(0xE0),
        Just(0xF0),
        any::<u8>(),
    ];
    let frame = (first, prop::collection::vec(any::<u8>(), 0..24)).prop_map(|(b, body)| {
        let mut v = vec![b, body.len() as u8];
        v.extend(body);
        v
    });
    prop::collection::vec(frame, 1..6).prop_map(|fs| fs.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_server_bytes_never_panic_the_client(bytes in frames()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(within(LIMIT, async move {
            let (client, _incoming, mut peer) = connect_default().await;
            peer.send_raw(&bytes).await;
            match tokio::time::timeout(Duration::from_secs(1), client.closed()).await {
                Err(_) => {
                    // Still up: the bytes were valid (or incomplete). It closes cleanly.
                    client.disconnect_normally().await.unwrap();
                }
                Ok(Ok(())) => panic!("closed without a reason"),
                Ok(Err(e)) => match e {
                    Error::ServerDisconnected { .. } => {}
                    e => assert!(
                        matches!(e.reason_code(), Some(0x81 | 0x82 | 0x93 | 0x94 | 0x95)),
                        "{e:?}"
                    ),
                },
            }
            drop(peer);
        }));
    }
}
