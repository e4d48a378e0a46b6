//! Feeds arbitrary bytes to the boot state readers: as the whole two-copy
//! area of the `bootstate` partition, and as one block with its CRC made
//! valid so the variable parser is reached.

#![no_main]

use image::bootstate::{self, BootState};
use image::env::{self, BLOCK_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whatever the disk holds, a state is chosen, and it writes back and
    // reads back as itself.
    let loaded = bootstate::read_area(data);
    if let Ok([(_, copy0), (_, copy1)]) = bootstate::write_plan(&loaded.state) {
        assert_eq!(copy0, copy1);
        let again = BootState::decode(&copy0).expect("a written block reads back");
        assert_eq!(again, loaded.state);
    }

    let mut block = data.to_vec();
    block.resize(BLOCK_SIZE, 0);
    let crc = crc32fast::hash(&block[4..]);
    block[..4].copy_from_slice(&crc.to_le_bytes());

    // Variables that parse encode back to the same variables.
    if let Ok(vars) = env::decode_block(&block) {
        let encoded = env::encode_block(&vars).expect("decoded variables fit a block");
        assert_eq!(env::decode_block(&encoded).as_ref(), Ok(&vars));
    }
    if let Ok(state) = BootState::decode(&block) {
        let encoded = state.encode().expect("a decoded state fits a block");
        assert_eq!(BootState::decode(&encoded).as_ref(), Ok(&state));
        for slot in [bootstate::Slot::A, bootstate::Slot::B] {
            let _ = state.mark_good(slot).encode();
            let _ = state.switch_to(slot).encode();
            let _ = state.update_outcome(slot, slot.other());
        }
    }
});
