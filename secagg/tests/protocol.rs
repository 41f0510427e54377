//! End-to-end rounds of the protocol: devices and server exchange the real messages (through
//! serde_json, as a transport would), with drop-outs and hostile messages.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use secagg::{
    advertise_keys, AggregateOutput, ClientInputSent, ClientKeysAdvertised, ClientSharesSent,
    FixedPoint, NeighbourKeys, Phase, ProtocolError, RelayedShares, RoundConfig, SecretKind,
    Server, UnmaskRequest,
};
use serde::{de::DeserializeOwned, Serialize};

/// Sends a message "over the wire": serialises, counts the bytes, deserialises.
fn wire<T: Serialize + DeserializeOwned>(message: &T, bytes: &mut usize) -> T {
    let json = serde_json::to_vec(message).expect("serialisable");
    *bytes += json.len();
    serde_json::from_slice(&json).expect("deserialisable")
}

#[derive(Default, Debug)]
struct Traffic {
    /// Per phase: (bytes up, messages up, bytes down, messages down).
    phases: [(usize, usize, usize, usize); 4],
    server_time: Duration,
}

impl Traffic {
    fn report(&self, label: &str) {
        let names = [
            "0 AdvertiseKeys",
            "1 ShareKeys",
            "2 MaskedInput",
            "3 Unmasking",
        ];
        for (name, &(up, up_n, down, down_n)) in names.iter().zip(&self.phases) {
            eprintln!(
                "{label}: phase {name}: {} B up per device ({up_n} devices), {} B down per device ({down_n} devices) [JSON]",
                up.checked_div(up_n).unwrap_or(0),
                down.checked_div(down_n).unwrap_or(0),
            );
        }
        eprintln!(
            "{label}: server time in receive/close/finish: {:.1} ms",
            self.server_time.as_secs_f64() * 1e3
        );
    }
}

/// One round driven phase by phase.
struct Round {
    config: RoundConfig,
    server: Server,
    rng: ChaCha20Rng,
    inputs: BTreeMap<u32, Vec<u32>>,
    advertised: BTreeMap<u32, ClientKeysAdvertised>,
    shared: BTreeMap<u32, ClientSharesSent>,
    masked: BTreeMap<u32, ClientInputSent>,
    traffic: Traffic,
}

fn ids(n: u32) -> Vec<u32> {
    // Sparse, unordered ids, to exercise the id -> index mapping.
    (0..n).rev().map(|i| 1000 + 7 * i).collect()
}

impl Round {
    /// Phase 0 on the device side: every participant advertises its keys.
    fn new(n: u32, vector_len: usize, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut graph_seed = [0u8; 32];
        rng.fill_bytes(&mut graph_seed);
        let config = RoundConfig::new(seed, graph_seed, ids(n), vector_len).unwrap();
        let mut round = Self {
            server: Server::new(config.clone()).unwrap(),
            config,
            rng,
            inputs: BTreeMap::new(),
            advertised: BTreeMap::new(),
            shared: BTreeMap::new(),
            masked: BTreeMap::new(),
            traffic: Traffic::default(),
        };
        for id in round.config.participants().to_vec() {
            let input = (0..vector_len).map(|_| round.rng.next_u32()).collect();
            round.inputs.insert(id, input);
            let (state, message) =
                advertise_keys(round.config.clone(), id, &mut round.rng).unwrap();
            let message = wire(&message, &mut round.traffic.phases[0].0);
            round.traffic.phases[0].1 += 1;
            round.advertised.insert(id, state);
            round
                .server_call(|s| s.receive_advertise_keys(&message))
                .unwrap();
        }
        round
    }

    fn server_call<T>(&mut self, f: impl FnOnce(&mut Server) -> T) -> T {
        let start = Instant::now();
        let out = f(&mut self.server);
        self.traffic.server_time += start.elapsed();
        out
    }

    fn close_phase0(&mut self) -> Vec<NeighbourKeys> {
        let out = self.server_call(|s| s.close_advertise_keys()).unwrap();
        let p = &mut self.traffic.phases[0];
        out.iter()
            .map(|m| {
                p.3 += 1;
                wire(m, &mut p.2)
            })
            .collect()
    }

    /// Phase 1: devices not in `drop` share their keys.
    fn phase1(&mut self, keys: &[NeighbourKeys], drop: &BTreeSet<u32>) -> Vec<RelayedShares> {
        for message in keys {
            if drop.contains(&message.recipient) {
                continue;
            }
            let state = self.advertised.remove(&message.recipient).unwrap();
            let (state, out) = state.share_keys(message, &mut self.rng).unwrap();
            let out = wire(&out, &mut self.traffic.phases[1].0);
            self.traffic.phases[1].1 += 1;
            self.shared.insert(message.recipient, state);
            self.server_call(|s| s.receive_share_keys(&out)).unwrap();
        }
        let out = self.server_call(|s| s.close_share_keys()).unwrap();
        let p = &mut self.traffic.phases[1];
        out.iter()
            .map(|m| {
                p.3 += 1;
                wire(m, &mut p.2)
            })
            .collect()
    }

    /// Phase 2: devices not in `drop` send their masked inputs.
    fn phase2(&mut self, relayed: &[RelayedShares], drop: &BTreeSet<u32>) -> Vec<UnmaskRequest> {
        for message in relayed {
            if drop.contains(&message.recipient) {
                continue;
            }
            let state = self.shared.remove(&message.recipient).unwrap();
            let input = self.inputs[&message.recipient].clone();
            let (state, out) = state.masked_input(message, &input).unwrap();
            let out = wire(&out, &mut self.traffic.phases[2].0);
            self.traffic.phases[2].1 += 1;
            self.masked.insert(message.recipient, state);
            self.server_call(|s| s.receive_masked_input(&out)).unwrap();
        }
        let out = self.server_call(|s| s.close_masked_inputs()).unwrap();
        let p = &mut self.traffic.phases[2];
        out.iter()
            .map(|m| {
                p.3 += 1;
                wire(m, &mut p.2)
            })
            .collect()
    }

    /// Phase 3: survivors not in `drop` answer; then the server finishes.
    fn phase3(&mut self, requests: &[UnmaskRequest], drop: &BTreeSet<u32>) -> AggregateOutput {
        for request in requests {
            if drop.contains(&request.recipient) {
                continue;
            }
            let state = self.masked.remove(&request.recipient).unwrap();
            let out = state.unmask(request).unwrap();
            let out = wire(&out, &mut self.traffic.phases[3].0);
            self.traffic.phases[3].1 += 1;
            self.server_call(|s| s.receive_unmask_response(&out))
                .unwrap();
        }
        self.server_call(|s| s.finish()).unwrap()
    }

    fn expected_sum(&self, survivors: &[u32]) -> Vec<u32> {
        let mut sum = vec![0u32; self.config.vector_len()];
        for id in survivors {
            for (s, x) in sum.iter_mut().zip(&self.inputs[id]) {
                *s = s.wrapping_add(*x);
            }
        }
        sum
    }
}

fn set(ids: &[u32]) -> BTreeSet<u32> {
    ids.iter().copied().collect()
}

/// Runs a whole round; the sets name devices dropping before ShareKeys, before MaskedInput
/// and before Unmasking. Returns the output and the round (for its inputs and traffic).
fn run(
    n: u32,
    len: usize,
    seed: u64,
    before_shares: &[u32],
    before_input: &[u32],
    before_unmask: &[u32],
) -> (AggregateOutput, Round) {
    let mut round = Round::new(n, len, seed);
    let keys = round.close_phase0();
    let relayed = round.phase1(&keys, &set(before_shares));
    let requests = round.phase2(&relayed, &set(before_input));
    let output = round.phase3(&requests, &set(before_unmask));
    (output, round)
}

#[test]
fn the_server_recovers_the_exact_sum_of_10_devices_when_none_drops() {
    let (output, round) = run(10, 1000, 1, &[], &[], &[]);
    assert_eq!(output.survivors, round.config.participants());
    assert!(output.dropped.is_empty());
    assert_eq!(output.sum, round.expected_sum(&output.survivors));
}

#[test]
fn the_server_recovers_the_sum_when_two_devices_drop_after_sharing_keys() {
    let all = ids(10);
    let dropped = [all[2], all[7]];
    let (output, round) = run(10, 1000, 2, &[], &dropped, &[]);
    let mut expected: Vec<u32> = all
        .iter()
        .copied()
        .filter(|id| !dropped.contains(id))
        .collect();
    expected.sort_unstable();
    assert_eq!(output.survivors, expected);
    let mut dropped_sorted = dropped.to_vec();
    dropped_sorted.sort_unstable();
    assert_eq!(output.dropped, dropped_sorted);
    assert_eq!(output.sum, round.expected_sum(&output.survivors));
    assert_ne!(
        output.sum,
        round.expected_sum(round.config.participants()),
        "the dropped inputs are not in the sum"
    );
}

#[test]
fn a_device_that_drops_after_its_masked_input_counts_as_a_survivor_and_its_input_is_summed() {
    let all = ids(10);
    let (output, round) = run(10, 1000, 3, &[], &[], &[all[4]]);
    assert!(output.survivors.contains(&all[4]));
    assert_eq!(output.survivors, round.config.participants());
    assert_eq!(output.sum, round.expected_sum(round.config.participants()));
}

#[test]
fn the_server_recovers_the_sum_when_a_device_drops_after_advertising_its_keys() {
    let all = ids(10);
    let (output, round) = run(10, 1000, 4, &[all[0]], &[all[5]], &[]);
    assert!(!output.survivors.contains(&all[0]) && !output.dropped.contains(&all[0]));
    assert_eq!(output.dropped, vec![all[5]]);
    assert_eq!(output.survivors.len(), 8);
    assert_eq!(output.sum, round.expected_sum(&output.survivors));
}

#[test]
fn float_deltas_survive_fixed_point_encoding_and_aggregation_within_the_error_bound() {
    let n = 10u32;
    let code = FixedPoint::new(0.5, n).unwrap();
    let mut round = Round::new(n, 64, 5);
    let mut deltas = BTreeMap::new();
    for (k, id) in round.config.participants().to_vec().into_iter().enumerate() {
        let delta: Vec<f32> = (0..64)
            .map(|j| ((j as f32) - 32.0) * 0.02 + k as f32 * 0.001)
            .collect();
        round.inputs.insert(id, code.encode(&delta).unwrap());
        deltas.insert(id, delta);
    }
    let keys = round.close_phase0();
    let relayed = round.phase1(&keys, &BTreeSet::new());
    let requests = round.phase2(&relayed, &BTreeSet::new());
    let output = round.phase3(&requests, &BTreeSet::new());
    let decoded = code.decode_sum(&output.sum);
    for (j, d) in decoded.iter().enumerate() {
        let exact: f64 = deltas
            .values()
            .map(|v| f64::from(v[j].clamp(-0.5, 0.5)))
            .sum();
        let bound = f64::from(n) * code.max_error_per_value() + 1e-6;
        assert!(
            (f64::from(*d) - exact).abs() <= bound,
            "coordinate {j}: {d} vs {exact}"
        );
    }
}

#[test]
fn a_masked_input_differs_from_its_input_everywhere_and_looks_uniform() {
    let len = 4096;
    let mut round = Round::new(10, len, 6);
    let target = round.config.participants()[3];
    let input = vec![12_345u32; len];
    round.inputs.insert(target, input.clone());
    let keys = round.close_phase0();
    let relayed = round.phase1(&keys, &BTreeSet::new());
    let message = relayed.iter().find(|m| m.recipient == target).unwrap();
    let state = round.shared.remove(&target).unwrap();
    let (_, masked) = state.masked_input(message, &input).unwrap();
    assert!(masked.values.iter().zip(&input).all(|(y, x)| y != x));
    // 16 buckets by the top 4 bits: chi-square with 15 degrees of freedom, p = 0.001 at 37.70.
    let mut buckets = [0usize; 16];
    for y in &masked.values {
        buckets[(y >> 28) as usize] += 1;
    }
    let expected = len as f64 / 16.0;
    let chi2: f64 = buckets
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    let mean = masked
        .values
        .iter()
        .map(|&y| f64::from(y) / 2f64.powi(32))
        .sum::<f64>()
        / len as f64;
    eprintln!("masked input of one device: chi-square {chi2:.2} (15 dof), mean {mean:.4}");
    assert!(chi2 < 37.70, "chi-square {chi2}");
    // The mean of 4096 uniform values in [0, 1) has standard deviation 0.0045.
    assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
}

/// A round of 10 run to the unmask requests, with no drops.
fn round_at_unmasking(seed: u64) -> (Round, Vec<UnmaskRequest>) {
    let mut round = Round::new(10, 100, seed);
    let keys = round.close_phase0();
    let relayed = round.phase1(&keys, &BTreeSet::new());
    let requests = round.phase2(&relayed, &BTreeSet::new());
    (round, requests)
}

#[test]
fn a_client_asked_for_both_the_self_mask_share_and_the_key_share_of_one_device_refuses() {
    let (mut round, requests) = round_at_unmasking(7);
    let mut request = requests[0].clone();
    let victim = request.survivors[0];
    request.dropped.push(victim);
    request.dropped.sort_unstable();
    let state = round.masked.remove(&request.recipient).unwrap();
    assert_eq!(
        state.unmask(&request).unwrap_err(),
        ProtocolError::BothSharesRequested { id: victim }
    );
}

#[test]
fn a_client_refuses_to_unmask_when_fewer_than_t_neighbours_survive() {
    let (mut round, requests) = round_at_unmasking(8);
    let t = round.config.threshold();
    let mut request = requests[1].clone();
    let moved = request.survivors.split_off(t - 1);
    request.dropped.extend(moved);
    request.dropped.sort_unstable();
    let state = round.masked.remove(&request.recipient).unwrap();
    assert_eq!(
        state.unmask(&request).unwrap_err(),
        ProtocolError::TooFewSurvivors {
            survivors: t - 1,
            threshold: t
        }
    );
}

#[test]
fn the_server_cannot_finish_below_threshold_and_finishes_once_enough_shares_arrive() {
    let (mut round, requests) = round_at_unmasking(9);
    let t = round.config.threshold();
    let mut responses = Vec::new();
    for request in &requests {
        let state = round.masked.remove(&request.recipient).unwrap();
        responses.push(state.unmask(request).unwrap());
    }
    // Too few responses: some survivor's self-mask seed has fewer than t shares.
    for response in &responses[..t - 1] {
        round.server.receive_unmask_response(response).unwrap();
    }
    match round.server.finish() {
        Err(ProtocolError::NotEnoughShares {
            kind: SecretKind::SelfMask,
            have,
            need,
            ..
        }) => {
            assert!(have < need && need == t)
        }
        other => panic!("expected NotEnoughShares, got {other:?}"),
    }
    assert_eq!(round.server.phase(), Phase::Unmasking);
    for response in &responses[t - 1..] {
        round.server.receive_unmask_response(response).unwrap();
    }
    let output = round.server.finish().unwrap();
    assert_eq!(output.sum, round.expected_sum(&output.survivors));
}

#[test]
fn a_phase_reached_by_fewer_than_t_devices_is_a_typed_error() {
    let config = RoundConfig::new(1, [1; 32], ids(10), 10).unwrap();
    let mut server = Server::new(config.clone()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    for &id in &config.participants()[..config.threshold() - 1] {
        let (_, m) = advertise_keys(config.clone(), id, &mut rng).unwrap();
        server.receive_advertise_keys(&m).unwrap();
    }
    assert_eq!(
        server.close_advertise_keys().unwrap_err(),
        ProtocolError::TooFewParticipants {
            phase: Phase::AdvertiseKeys,
            have: config.threshold() - 1,
            need: config.threshold()
        }
    );
}

#[test]
fn a_tampered_or_misrouted_ciphertext_is_refused_by_its_recipient() {
    let mut round = Round::new(10, 100, 11);
    let keys = round.close_phase0();
    let relayed = round.phase1(&keys, &BTreeSet::new());
    let input = vec![0u32; 100];

    let mut flipped = relayed[0].clone();
    let sender = flipped.shares[2].peer;
    flipped.shares[2].ciphertext[40] ^= 0x01;
    let state = round.shared.remove(&flipped.recipient).unwrap();
    assert_eq!(
        state.masked_input(&flipped, &input).unwrap_err(),
        ProtocolError::DecryptionFailed { from: sender }
    );

    // Two senders' ciphertexts swapped: each is bound to its sender.
    let mut swapped = relayed[1].clone();
    let (a, b) = (
        swapped.shares[0].ciphertext.clone(),
        swapped.shares[1].ciphertext.clone(),
    );
    swapped.shares[0].ciphertext = b;
    swapped.shares[1].ciphertext = a;
    let first = swapped.shares[0].peer;
    let state = round.shared.remove(&swapped.recipient).unwrap();
    assert_eq!(
        state.masked_input(&swapped, &input).unwrap_err(),
        ProtocolError::DecryptionFailed { from: first }
    );

    let mut truncated = relayed[2].clone();
    truncated.shares[0].ciphertext.pop();
    let state = round.shared.remove(&truncated.recipient).unwrap();
    assert!(matches!(
        state.masked_input(&truncated, &input),
        Err(ProtocolError::WrongCiphertextLength { .. })
    ));
}

#[test]
fn a_masked_input_of_the_wrong_length_is_refused_by_client_and_server() {
    let mut round = Round::new(10, 100, 12);
    let keys = round.close_phase0();
    let relayed = round.phase1(&keys, &BTreeSet::new());
    let id = relayed[0].recipient;
    let state = round.shared.remove(&id).unwrap();
    assert_eq!(
        state.masked_input(&relayed[0], &[0u32; 99]).unwrap_err(),
        ProtocolError::WrongVectorLength {
            expected: 100,
            got: 99
        }
    );
    let id = relayed[1].recipient;
    let state = round.shared.remove(&id).unwrap();
    let (_, mut message) = state.masked_input(&relayed[1], &[0u32; 100]).unwrap();
    message.values.push(0);
    assert_eq!(
        round.server.receive_masked_input(&message).unwrap_err(),
        ProtocolError::WrongVectorLength {
            expected: 100,
            got: 101
        }
    );
    message.values.truncate(100);
    round.server.receive_masked_input(&message).unwrap();
    assert_eq!(
        round.server.receive_masked_input(&message).unwrap_err(),
        ProtocolError::DuplicateMessage {
            id,
            phase: Phase::MaskedInput
        }
    );
}

#[test]
fn the_server_refuses_unknown_repeated_misrouted_and_out_of_phase_messages() {
    let config = RoundConfig::new(5, [3; 32], ids(10), 10).unwrap();
    let mut server = Server::new(config.clone()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut states = BTreeMap::new();
    for &id in config.participants() {
        let (state, m) = advertise_keys(config.clone(), id, &mut rng).unwrap();
        server.receive_advertise_keys(&m).unwrap();
        states.insert(id, (state, m));
    }
    let (_, first) = states.values().next().unwrap();
    let first = first.clone();
    // A key already advertised by another device is refused, as is one key used twice.
    let config2 = RoundConfig::new(6, [3; 32], ids(10), 10).unwrap();
    let mut server2 = Server::new(config2.clone()).unwrap();
    let (_, mut reuse) =
        advertise_keys(config2.clone(), config2.participants()[0], &mut rng).unwrap();
    server2.receive_advertise_keys(&reuse).unwrap();
    reuse.sender = config2.participants()[1];
    reuse.c_pk = [9; 32];
    assert_eq!(
        server2.receive_advertise_keys(&reuse).unwrap_err(),
        ProtocolError::DuplicatePublicKey { id: reuse.sender }
    );
    reuse.s_pk = [9; 32];
    assert_eq!(
        server2.receive_advertise_keys(&reuse).unwrap_err(),
        ProtocolError::DuplicatePublicKey { id: reuse.sender }
    );
    let mut m = first.clone();
    assert_eq!(
        server.receive_advertise_keys(&m).unwrap_err(),
        ProtocolError::DuplicateMessage {
            id: m.sender,
            phase: Phase::AdvertiseKeys
        }
    );
    m.sender = 1;
    assert_eq!(
        server.receive_advertise_keys(&m).unwrap_err(),
        ProtocolError::UnknownDevice { id: 1 }
    );
    m.round_id = 6;
    assert!(matches!(
        server.receive_advertise_keys(&m),
        Err(ProtocolError::WrongRound { .. })
    ));
    assert!(matches!(
        server.finish(),
        Err(ProtocolError::WrongPhase {
            current: Phase::AdvertiseKeys,
            ..
        })
    ));

    let keys = server.close_advertise_keys().unwrap();
    // A device whose shares skip a neighbour is refused.
    let target = keys[0].recipient;
    let (state, _) = states.remove(&target).unwrap();
    let (_, mut shares) = state.share_keys(&keys[0], &mut rng).unwrap();
    let removed = shares.shares.pop().unwrap();
    assert_eq!(
        server.receive_share_keys(&shares).unwrap_err(),
        ProtocolError::WrongShareRecipients { sender: target }
    );
    shares.shares.push(removed);
    shares.shares.last_mut().unwrap().ciphertext.push(0);
    assert!(matches!(
        server.receive_share_keys(&shares),
        Err(ProtocolError::WrongCiphertextLength { .. })
    ));
    shares.shares.last_mut().unwrap().ciphertext.pop();
    server.receive_share_keys(&shares).unwrap();
}

#[test]
fn the_server_refuses_an_unmask_response_that_reveals_what_was_not_asked() {
    let (mut round, requests) = round_at_unmasking(14);
    let request = &requests[0];
    let state = round.masked.remove(&request.recipient).unwrap();
    let good = state.unmask(request).unwrap();
    let mut extra = good.clone();
    let mut fake = extra.self_mask_shares[0].clone();
    fake.owner = request.recipient; // its own secret: never requested
    extra.mask_key_shares.push(fake);
    assert!(matches!(
        round.server.receive_unmask_response(&extra),
        Err(ProtocolError::UnrequestedShare {
            kind: SecretKind::MaskKey,
            ..
        })
    ));
    let mut moved = good.clone();
    moved.self_mask_shares[0].share.x ^= 0x80;
    assert!(matches!(
        round.server.receive_unmask_response(&moved),
        Err(ProtocolError::WrongSharePoint { .. })
    ));
    round.server.receive_unmask_response(&good).unwrap();
}

#[test]
fn a_client_refuses_hostile_neighbour_key_lists() {
    let config = RoundConfig::new(5, [4; 32], ids(20), 10).unwrap();
    let mut server = Server::new(config.clone()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(15);
    let mut states = BTreeMap::new();
    for &id in config.participants() {
        let (state, m) = advertise_keys(config.clone(), id, &mut rng).unwrap();
        server.receive_advertise_keys(&m).unwrap();
        states.insert(id, state);
    }
    let keys = server.close_advertise_keys().unwrap();
    let target = keys[0].recipient;
    let neighbours = states[&target].neighbour_ids();
    let stranger = *config
        .participants()
        .iter()
        .find(|id| **id != target && !neighbours.contains(id))
        .unwrap();

    type Case = (NeighbourKeys, fn(&ProtocolError) -> bool);
    let mut cases: Vec<Case> = Vec::new();
    let mut with_stranger = keys[0].clone();
    with_stranger.neighbours[0].id = stranger;
    with_stranger.neighbours.sort_by_key(|k| k.id);
    cases.push((with_stranger, |e| {
        matches!(e, ProtocolError::NotANeighbour { .. })
    }));
    let mut repeated_key = keys[0].clone();
    repeated_key.neighbours[1].c_pk = repeated_key.neighbours[0].s_pk;
    cases.push((repeated_key, |e| {
        matches!(e, ProtocolError::DuplicatePublicKey { .. })
    }));
    let mut low_order = keys[0].clone();
    low_order.neighbours[0].c_pk = [0u8; 32];
    cases.push((low_order, |e| {
        matches!(e, ProtocolError::WeakPublicKey { .. })
    }));
    let mut too_long = keys[0].clone();
    too_long.neighbours.extend(keys[0].neighbours.clone());
    cases.push((too_long, |e| {
        matches!(e, ProtocolError::TooManyEntries { .. })
    }));
    let mut unsorted = keys[0].clone();
    unsorted.neighbours.swap(0, 1);
    cases.push((unsorted, |e| {
        matches!(e, ProtocolError::NotStrictlyIncreasing)
    }));
    let mut too_few = keys[0].clone();
    too_few.neighbours.truncate(config.threshold() - 1);
    cases.push((too_few, |e| {
        matches!(e, ProtocolError::TooFewNeighbours { .. })
    }));
    let mut other_round = keys[0].clone();
    other_round.round_id += 1;
    cases.push((other_round, |e| {
        matches!(e, ProtocolError::WrongRound { .. })
    }));
    let mut other_recipient = keys[0].clone();
    other_recipient.recipient = stranger;
    cases.push((other_recipient, |e| {
        matches!(e, ProtocolError::WrongRecipient { .. })
    }));

    for (i, (message, expected)) in cases.into_iter().enumerate() {
        let (state, _) = advertise_keys(config.clone(), target, &mut rng).unwrap();
        let err = state.share_keys(&message, &mut rng).unwrap_err();
        assert!(expected(&err), "case {i}: {err:?}");
    }
}

#[test]
fn a_round_of_200_devices_with_5_percent_drop_outs_recovers_the_sum() {
    let n = 200u32;
    let len = 1000;
    let all = ids(n);
    // 10 drop-outs: 4 after advertising, 4 after sharing keys, 2 after their masked input.
    let before_shares: Vec<u32> = all.iter().copied().step_by(20).take(4).collect();
    let before_input: Vec<u32> = all.iter().copied().skip(7).step_by(20).take(4).collect();
    let before_unmask: Vec<u32> = all.iter().copied().skip(13).step_by(20).take(2).collect();
    let start = Instant::now();
    let (output, round) = run(n, len, 16, &before_shares, &before_input, &before_unmask);
    let total = start.elapsed();
    assert_eq!(output.survivors.len(), 192);
    assert_eq!(output.dropped.len(), 4);
    assert_eq!(output.sum, round.expected_sum(&output.survivors));
    eprintln!(
        "200 devices, vector of {len} u32, degree k = {}, threshold t = {}",
        round.config.degree(),
        round.config.threshold()
    );
    round.traffic.report("n=200");
    eprintln!(
        "n=200: whole round (all devices and server, one thread): {:.1} ms",
        total.as_secs_f64() * 1e3
    );
}
