//! Feeds arbitrary bytes to the readers of what the box finds on its
//! medium at boot: a GPT header sector with its entry array, and an ext4
//! superblock. A table that parses must plan a growth that reads back as
//! the same partitions with only the grown one changed.

#![no_main]

use image::ext4;
use image::gpt::Table;
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;

fuzz_target!(|data: &[u8]| {
    let _ = ext4::Size::parse(data);

    let (header, entries) = data.split_at(data.len().min(SECTOR));
    let Ok(table) = Table::parse(header, entries) else {
        return;
    };
    let before = table.partitions();
    let Some(last) = before.iter().max_by_key(|p| p.last_lba) else {
        return;
    };
    for disk_sectors in [table.last_usable_lba().saturating_add(34), 1 << 21, u64::MAX / 1024] {
        let Ok(Some(plan)) = table.grow(&last.name, disk_sectors, SECTOR) else {
            continue;
        };
        // The primary header is the fourth write, its array the third.
        let (_, header) = &plan.writes[3];
        let (_, array) = &plan.writes[2];
        let grown = Table::parse(header, array).expect("a planned table reads back");
        let after = grown.partitions();
        assert_eq!(after.len(), before.len());
        for (a, b) in before.iter().zip(&after) {
            if a.number == plan.partition.number {
                assert_eq!(b, &plan.partition);
                assert!(b.last_lba >= a.last_lba);
            } else {
                assert_eq!(a, b);
            }
        }
    }
});
