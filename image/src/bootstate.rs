//! The boot state on the raw `bootstate` partition, as docs/image.md fixes it.
//!
//! Two copies of one U-Boot environment block ([`crate::env`]) hold three
//! variables: `BOOT_ORDER` (`A B` or `B A`) and `BOOT_A_LEFT`,
//! `BOOT_B_LEFT` (tries left, `0` to `3`). The boot script is the boot
//! chooser: it boots the first slot of `BOOT_ORDER` with tries left and
//! decrements its counter. The running system marks its slot good (counter
//! back to 3) after its health check, and switches slots for an update.
//!
//! Everything here is pure: [`read_area`] takes the bytes the shell read
//! from the partition, [`write_plan`] gives the bytes and offsets the shell
//! writes, copy 0 first, then a sync, then copy 1.

use std::fmt;
use std::str::FromStr;

use crate::env::{self, Variable, BLOCK_SIZE};
use crate::error::BootStateError;

/// Offsets of copy 0 and copy 1 in the partition.
pub const COPY_OFFSETS: [u64; 2] = [0, 0x1_0000];

/// Bytes to read from the start of the partition to see both copies.
pub const AREA_LEN: usize = 0x1_0000 + BLOCK_SIZE;

/// Tries a slot gets when switched to, marked good, or reset by the chooser.
pub const MAX_TRIES: u8 = 3;

const ORDER_VAR: &str = "BOOT_ORDER";
const LEFT_VARS: [&str; 2] = ["BOOT_A_LEFT", "BOOT_B_LEFT"];

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Slot A: partitions `kernel_a` and `rootfs_a`.
    A,
    /// Slot B: partitions `kernel_b` and `rootfs_b`.
    B,
}

impl Slot {
    /// The other slot: the inactive one when `self` is running.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The letter the boot script and the kernel command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `A` or `B`, as found in `edge.slot=` on the kernel command line.
impl FromStr for Slot {
    type Err = BootStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" => Ok(Slot::A),
            "B" => Ok(Slot::B),
            _ => Err(invalid("slot", s)),
        }
    }
}

/// The decoded boot state: order, tries left, and any other variables.
///
/// Fields are private so every value holds a valid order and counters in
/// `0..=3`; it changes only through the transitions below. Two states are
/// equal when order, counters and extra variables are; where in the block
/// the chooser's variables sit does not count.
#[derive(Debug, Clone)]
pub struct BootState {
    primary: Slot,
    left: [u8; 2],
    /// Every variable of the block this state came from, in block order.
    /// U-Boot may leave others (`fileaddr`); they are written back untouched
    /// and in place. The chooser's own entries only keep their place here:
    /// their values come from `primary` and `left` when encoding.
    vars: Vec<Variable>,
}

impl PartialEq for BootState {
    fn eq(&self, other: &Self) -> bool {
        self.primary == other.primary
            && self.left == other.left
            && self.extra_variables().eq(other.extra_variables())
    }
}

impl Eq for BootState {}

/// What the state says about the boot that is running now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootCheck {
    /// The first slot of `BOOT_ORDER` is running: an ordinary boot, or the
    /// trial boot of a freshly installed slot.
    Primary,
    /// The second slot is running because the first has no tries left:
    /// the boot chooser fell back.
    Fallback {
        /// The slot that used up its tries.
        failed: Slot,
    },
    /// The second slot is running although the first has tries left: the
    /// state was rewritten after the chooser ran, or the box did not boot
    /// through the chooser.
    Inconsistent,
}

/// What became of an update that expected the box to come up in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The new slot runs on a try; run the health check, then mark it good.
    Trial {
        /// Tries left after this boot.
        tries_left: u8,
    },
    /// The new slot runs and is already marked good.
    Good,
    /// The new slot used up its tries and the chooser booted the other one:
    /// the update rolled back.
    RolledBack,
    /// The other slot runs and the new one is not first in `BOOT_ORDER`:
    /// the switch never reached the disk, or was undone.
    NotSwitched,
    /// The other slot runs although the new one is first with tries left.
    Inconsistent,
}

impl UpdateOutcome {
    /// Whether the box does not run the slot the update installed.
    pub fn is_rollback(self) -> bool {
        !matches!(self, UpdateOutcome::Trial { .. } | UpdateOutcome::Good)
    }
}

impl Default for BootState {
    /// The state the boot script assumes when both copies are bad.
    fn default() -> Self {
        BootState {
            primary: Slot::A,
            left: [MAX_TRIES; 2],
            vars: Vec::new(),
        }
    }
}

impl BootState {
    /// A state with `primary` first in `BOOT_ORDER` and the given tries left.
    pub fn new(primary: Slot, left_a: u8, left_b: u8) -> Result<Self, BootStateError> {
        for (name, left) in LEFT_VARS.into_iter().zip([left_a, left_b]) {
            if left > MAX_TRIES {
                return Err(invalid(name, &left.to_string()));
            }
        }
        Ok(BootState {
            primary,
            left: [left_a, left_b],
            vars: Vec::new(),
        })
    }

    /// Decodes one block: CRC checked, all three variables present and valid.
    pub fn decode(block: &[u8]) -> Result<Self, BootStateError> {
        let vars = env::decode_block(block)?;
        let value = |name: &'static str| {
            vars.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .ok_or(BootStateError::MissingVariable(name))
        };
        let primary = parse_order(value(ORDER_VAR)?)?;
        let left = [
            parse_left(LEFT_VARS[0], value(LEFT_VARS[0])?)?,
            parse_left(LEFT_VARS[1], value(LEFT_VARS[1])?)?,
        ];
        Ok(BootState {
            primary,
            left,
            vars,
        })
    }

    /// Encodes one block of [`BLOCK_SIZE`] bytes.
    ///
    /// Variables keep the order of the block the state was decoded from; a
    /// state built from scratch writes `BOOT_ORDER`, `BOOT_A_LEFT`,
    /// `BOOT_B_LEFT` in that order.
    pub fn encode(&self) -> Result<Vec<u8>, BootStateError> {
        env::encode_block(&self.variables())
    }

    /// `BOOT_ORDER`: the slots in the order the chooser tries them.
    pub fn order(&self) -> [Slot; 2] {
        [self.primary, self.primary.other()]
    }

    /// The first slot of `BOOT_ORDER`.
    pub fn primary(&self) -> Slot {
        self.primary
    }

    /// Tries left for `slot`.
    pub fn tries_left(&self, slot: Slot) -> u8 {
        self.left[slot.index()]
    }

    /// Variables other than the chooser's three, in block order.
    pub fn extra_variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .filter(|(name, _)| !is_chooser_var(name))
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Marks `slot` good: its counter goes back to [`MAX_TRIES`].
    ///
    /// Leaves `BOOT_ORDER` alone, as RAUC's and Home Assistant OS's
    /// mark-good do. Compare with `self` to skip a write that changes nothing.
    #[must_use]
    pub fn mark_good(&self, slot: Slot) -> BootState {
        let mut next = self.clone();
        next.left[slot.index()] = MAX_TRIES;
        next
    }

    /// Puts `slot` first in `BOOT_ORDER` with [`MAX_TRIES`] tries.
    ///
    /// The other slot keeps its counter, so if the new slot fails its tries
    /// the chooser falls back to it.
    #[must_use]
    pub fn switch_to(&self, slot: Slot) -> BootState {
        let mut next = self.clone();
        next.primary = slot;
        next.left[slot.index()] = MAX_TRIES;
        next
    }

    /// The boot chooser's step, as the boot script does it: the slot to boot
    /// and the state it writes before booting.
    ///
    /// The box never runs this; it is here so tests can play boots and so the
    /// script's rule is stated once in code.
    #[must_use]
    pub fn choose(&self) -> (Slot, BootState) {
        let mut next = self.clone();
        let slot = match self.order().into_iter().find(|s| self.tries_left(*s) > 0) {
            Some(slot) => slot,
            None => {
                // A box that never boots is worse than one that retries.
                next.left = [MAX_TRIES; 2];
                self.primary
            }
        };
        next.left[slot.index()] -= 1;
        (slot, next)
    }

    /// Checks the state against the slot that is running (`edge.slot=`).
    pub fn check_booted(&self, booted: Slot) -> BootCheck {
        if booted == self.primary {
            BootCheck::Primary
        } else if self.tries_left(self.primary) == 0 {
            BootCheck::Fallback {
                failed: self.primary,
            }
        } else {
            BootCheck::Inconsistent
        }
    }

    /// After an update that switched to `expected`, tells what happened,
    /// given the slot that is running.
    pub fn update_outcome(&self, booted: Slot, expected: Slot) -> UpdateOutcome {
        if booted == expected {
            return match self.tries_left(expected) {
                MAX_TRIES => UpdateOutcome::Good,
                tries_left => UpdateOutcome::Trial { tries_left },
            };
        }
        if self.primary != expected {
            return UpdateOutcome::NotSwitched;
        }
        match self.check_booted(booted) {
            BootCheck::Fallback { .. } => UpdateOutcome::RolledBack,
            BootCheck::Primary | BootCheck::Inconsistent => UpdateOutcome::Inconsistent,
        }
    }

    /// Whether an update that switched to `expected` did not stick.
    pub fn rollback(&self, booted: Slot, expected: Slot) -> bool {
        self.update_outcome(booted, expected).is_rollback()
    }

    /// All variables to write: the decoded ones with the chooser's values
    /// replaced in place, then any chooser variable the block lacked.
    fn variables(&self) -> Vec<Variable> {
        let own = [
            (
                ORDER_VAR,
                format!("{} {}", self.primary, self.primary.other()),
            ),
            (LEFT_VARS[0], self.left[0].to_string()),
            (LEFT_VARS[1], self.left[1].to_string()),
        ];
        let mut vars = self.vars.clone();
        for (name, value) in own {
            match vars.iter_mut().find(|(n, _)| n == name) {
                Some(var) => var.1 = value,
                None => vars.push((name.to_owned(), value)),
            }
        }
        vars
    }
}

/// Where [`read_area`] found the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Copy 0 was valid.
    Copy0,
    /// Copy 0 was bad; copy 1 was valid.
    Copy1 {
        /// Why copy 0 was rejected.
        copy0: BootStateError,
    },
    /// Both copies were bad: the defaults (`A B`, 3, 3), as the boot script
    /// assumes in that case, so the box and the chooser agree.
    Defaults {
        /// Why copy 0 was rejected.
        copy0: BootStateError,
        /// Why copy 1 was rejected.
        copy1: BootStateError,
    },
}

/// The state read from the partition and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The state the boot chooser used.
    pub state: BootState,
    /// Which copy it came from.
    pub source: Source,
    /// Whether copy 1 was valid and equal to copy 0.
    pub copies_agree: bool,
}

impl Loaded {
    /// Whether writing [`write_plan`] of the state would repair the disk:
    /// copy 0 was bad, or copy 1 is bad or stale (a power cut between the
    /// two writes leaves copy 1 one step behind).
    pub fn needs_repair(&self) -> bool {
        self.source != Source::Copy0 || !self.copies_agree
    }
}

/// Chooses the state from the first [`AREA_LEN`] bytes of the partition the
/// way the boot script does: copy 0 if valid, else copy 1, else defaults.
///
/// A copy whose CRC holds but whose values are out of range counts as bad:
/// neither U-Boot nor the box writes one. A shorter `area` makes the copies
/// it cannot hold bad.
pub fn read_area(area: &[u8]) -> Loaded {
    let copy = |i: usize| {
        let start = usize::try_from(COPY_OFFSETS[i]).unwrap_or(usize::MAX);
        let block = area.get(start..).unwrap_or_default();
        let block = block.get(..BLOCK_SIZE).unwrap_or(block);
        BootState::decode(block)
    };
    let (copy0, copy1) = (copy(0), copy(1));
    let copies_agree = matches!((&copy0, &copy1), (Ok(a), Ok(b)) if a == b);
    let (state, source) = match (copy0, copy1) {
        (Ok(state), _) => (state, Source::Copy0),
        (Err(copy0), Ok(state)) => (state, Source::Copy1 { copy0 }),
        (Err(copy0), Err(copy1)) => (BootState::default(), Source::Defaults { copy0, copy1 }),
    };
    Loaded {
        state,
        source,
        copies_agree,
    }
}

/// The two writes that store `state`: copy 0 first, then copy 1.
///
/// The shell writes the first, syncs, then writes the second, so a power
/// cut leaves at least one valid copy.
pub fn write_plan(state: &BootState) -> Result<[(u64, Vec<u8>); 2], BootStateError> {
    let block = state.encode()?;
    Ok([(COPY_OFFSETS[0], block.clone()), (COPY_OFFSETS[1], block)])
}

fn is_chooser_var(name: &str) -> bool {
    name == ORDER_VAR || LEFT_VARS.contains(&name)
}

fn parse_order(value: &str) -> Result<Slot, BootStateError> {
    match value {
        "A B" => Ok(Slot::A),
        "B A" => Ok(Slot::B),
        _ => Err(invalid(ORDER_VAR, value)),
    }
}

fn parse_left(name: &'static str, value: &str) -> Result<u8, BootStateError> {
    match value {
        "0" => Ok(0),
        "1" => Ok(1),
        "2" => Ok(2),
        "3" => Ok(3),
        _ => Err(invalid(name, value)),
    }
}

fn invalid(name: &'static str, value: &str) -> BootStateError {
    BootStateError::InvalidValue {
        name,
        value: value.chars().take(32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(vars: &[(&str, &str)]) -> Vec<u8> {
        env::encode_block(vars).expect("fits")
    }

    fn area(copy0: &[u8], copy1: &[u8]) -> Vec<u8> {
        let mut area = vec![0; AREA_LEN];
        area[..BLOCK_SIZE].copy_from_slice(copy0);
        area[0x1_0000..].copy_from_slice(copy1);
        area
    }

    fn state(primary: Slot, a: u8, b: u8) -> BootState {
        BootState::new(primary, a, b).expect("valid counters")
    }

    #[test]
    fn slot_names_and_other() {
        assert_eq!(Slot::A.to_string(), "A");
        assert_eq!(Slot::B.to_string(), "B");
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other(), Slot::A);
        assert_eq!("B".parse::<Slot>(), Ok(Slot::B));
        assert!("a".parse::<Slot>().is_err());
    }

    #[test]
    fn default_encodes_the_documented_variables() {
        let bytes = BootState::default().encode().expect("fits");
        assert_eq!(
            env::decode_block(&bytes).expect("valid"),
            vec![
                ("BOOT_ORDER".to_owned(), "A B".to_owned()),
                ("BOOT_A_LEFT".to_owned(), "3".to_owned()),
                ("BOOT_B_LEFT".to_owned(), "3".to_owned()),
            ]
        );
    }

    #[test]
    fn decode_reads_order_and_counters() {
        let s = BootState::decode(&block(&[
            ("BOOT_A_LEFT", "0"),
            ("BOOT_B_LEFT", "2"),
            ("BOOT_ORDER", "B A"),
        ]))
        .expect("valid");
        assert_eq!(s.order(), [Slot::B, Slot::A]);
        assert_eq!((s.tries_left(Slot::A), s.tries_left(Slot::B)), (0, 2));
    }

    #[test]
    fn extra_variables_survive_in_place() {
        let original = block(&[
            ("BOOT_A_LEFT", "3"),
            ("fileaddr", "40400000"),
            ("BOOT_B_LEFT", "1"),
            ("BOOT_ORDER", "A B"),
        ]);
        let s = BootState::decode(&original).expect("valid");
        assert_eq!(s.encode().expect("fits"), original);
        assert_eq!(
            s.extra_variables().collect::<Vec<_>>(),
            [("fileaddr", "40400000")]
        );
        let changed =
            BootState::decode(&s.mark_good(Slot::B).encode().expect("fits")).expect("valid");
        assert_eq!(changed.tries_left(Slot::B), 3);
        assert_eq!(changed.extra_variables().count(), 1);
    }

    #[test]
    fn malformed_values_are_clear_errors() {
        let cases = [
            (("BOOT_ORDER", "A A"), "BOOT_ORDER"),
            (("BOOT_ORDER", "AB"), "BOOT_ORDER"),
            (("BOOT_A_LEFT", "4"), "BOOT_A_LEFT"),
            (("BOOT_A_LEFT", "03"), "BOOT_A_LEFT"),
            (("BOOT_A_LEFT", "-1"), "BOOT_A_LEFT"),
        ];
        for ((name, value), bad) in cases {
            let mut vars = vec![
                ("BOOT_ORDER", "A B"),
                ("BOOT_A_LEFT", "3"),
                ("BOOT_B_LEFT", "3"),
            ];
            for var in &mut vars {
                if var.0 == name {
                    var.1 = value;
                }
            }
            let err = BootState::decode(&block(&vars)).expect_err("invalid value");
            assert!(
                matches!(err, BootStateError::InvalidValue { name, .. } if name == bad),
                "{err}"
            );
        }
        assert_eq!(
            BootState::decode(&block(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3")])),
            Err(BootStateError::MissingVariable("BOOT_B_LEFT"))
        );
    }

    #[test]
    fn new_refuses_counters_above_three() {
        assert!(BootState::new(Slot::A, 4, 0).is_err());
        assert!(BootState::new(Slot::A, 3, 0).is_ok());
    }

    #[test]
    fn mark_good_and_switch_to() {
        let s = state(Slot::A, 1, 0);
        let good = s.mark_good(Slot::A);
        assert_eq!(good, state(Slot::A, 3, 0));
        assert_eq!(
            good.mark_good(Slot::A),
            good,
            "marking twice changes nothing"
        );
        let switched = good.switch_to(Slot::B);
        assert_eq!(switched, state(Slot::B, 3, 3));
        assert_eq!(
            state(Slot::A, 2, 1).switch_to(Slot::B),
            state(Slot::B, 2, 3)
        );
    }

    #[test]
    fn chooser_takes_first_slot_with_tries_then_falls_back() {
        let s = state(Slot::B, 3, 1);
        let (slot, s) = s.choose();
        assert_eq!((slot, s.tries_left(Slot::B)), (Slot::B, 0));
        let (slot, s) = s.choose();
        assert_eq!((slot, s.tries_left(Slot::A)), (Slot::A, 2));
        let (slot, s) = state(Slot::B, 0, 0).choose();
        assert_eq!((slot, s), (Slot::B, state(Slot::B, 3, 2)));
    }

    #[test]
    fn booted_slot_checks() {
        assert_eq!(
            state(Slot::A, 2, 3).check_booted(Slot::A),
            BootCheck::Primary
        );
        assert_eq!(
            state(Slot::B, 2, 0).check_booted(Slot::A),
            BootCheck::Fallback { failed: Slot::B }
        );
        assert_eq!(
            state(Slot::B, 2, 1).check_booted(Slot::A),
            BootCheck::Inconsistent
        );
    }

    /// Plays an update to B that never gets healthy: three trial boots, then
    /// the chooser falls back to A and the box sees the rollback.
    #[test]
    fn update_that_never_gets_healthy_rolls_back() {
        let mut s = state(Slot::A, 3, 3).switch_to(Slot::B);
        for tries_left in [2, 1, 0] {
            let (booted, next) = s.choose();
            assert_eq!(booted, Slot::B);
            assert_eq!(
                next.update_outcome(booted, Slot::B),
                UpdateOutcome::Trial { tries_left }
            );
            assert!(!next.rollback(booted, Slot::B));
            s = next;
        }
        let (booted, s) = s.choose();
        assert_eq!(booted, Slot::A);
        assert_eq!(s.update_outcome(booted, Slot::B), UpdateOutcome::RolledBack);
        assert!(s.rollback(booted, Slot::B));
        assert_eq!(
            s.check_booted(booted),
            BootCheck::Fallback { failed: Slot::B }
        );
    }

    #[test]
    fn update_outcomes() {
        let good = state(Slot::B, 3, 3);
        assert_eq!(good.update_outcome(Slot::B, Slot::B), UpdateOutcome::Good);
        assert_eq!(
            state(Slot::A, 2, 3).update_outcome(Slot::A, Slot::B),
            UpdateOutcome::NotSwitched
        );
        assert_eq!(
            state(Slot::B, 2, 2).update_outcome(Slot::A, Slot::B),
            UpdateOutcome::Inconsistent
        );
        assert!(UpdateOutcome::NotSwitched.is_rollback());
    }

    #[test]
    fn read_area_prefers_copy0_then_copy1_then_defaults() {
        let a = state(Slot::A, 1, 3).encode().expect("fits");
        let b = state(Slot::B, 3, 2).encode().expect("fits");
        let mut broken = a.clone();
        broken[100] ^= 1;

        let loaded = read_area(&area(&a, &a));
        assert_eq!(loaded.state, state(Slot::A, 1, 3));
        assert_eq!(loaded.source, Source::Copy0);
        assert!(!loaded.needs_repair());

        let loaded = read_area(&area(&a, &b));
        assert_eq!(loaded.state, state(Slot::A, 1, 3));
        assert!(!loaded.copies_agree && loaded.needs_repair());

        let loaded = read_area(&area(&broken, &b));
        assert_eq!(loaded.state, state(Slot::B, 3, 2));
        assert!(matches!(
            loaded.source,
            Source::Copy1 {
                copy0: BootStateError::CrcMismatch { .. }
            }
        ));

        let loaded = read_area(&area(&broken, &broken));
        assert_eq!(loaded.state, BootState::default());
        assert!(matches!(loaded.source, Source::Defaults { .. }));
        assert!(loaded.needs_repair());
    }

    #[test]
    fn blank_or_short_areas_give_defaults() {
        for len in [0, 5, BLOCK_SIZE, AREA_LEN - 1] {
            let loaded = read_area(&vec![0xff; len]);
            assert!(matches!(loaded.source, Source::Defaults { .. }), "{len}");
        }
        let a = state(Slot::B, 0, 3).encode().expect("fits");
        let loaded = read_area(&a);
        assert_eq!(loaded.state.primary(), Slot::B);
        assert!(!loaded.copies_agree);
    }

    #[test]
    fn write_plan_writes_copy0_first_then_copy1() {
        let s = state(Slot::B, 3, 3);
        let [(off0, first), (off1, second)] = write_plan(&s).expect("fits");
        assert_eq!((off0, off1), (0, 0x1_0000));
        assert_eq!(first, second);
        let mut disk = vec![0; AREA_LEN];
        disk[..BLOCK_SIZE].copy_from_slice(&first);
        disk[0x1_0000..].copy_from_slice(&second);
        let loaded = read_area(&disk);
        assert_eq!((loaded.state, loaded.source), (s, Source::Copy0));
    }
}
