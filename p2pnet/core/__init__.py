"""The pure core: no I/O, no clock reads, no trio, no libp2p. Bytes in, values or errors out.

varint.py      encode_uvarint, decode_uvarint        multiformats unsigned varints
text.py        quote_bounded                         peer-sent text in errors: quoted, bounded
tensor.py      TensorHeader, encode/decode_*_tensor  tensors as msgpack ext types 1 and 2
oip.py         decode_infer_request,
               encode_infer_reply, model_metadata    Open Inference Protocol v2 bodies, JSON
                                                     and binary, to and from arrays
framing.py     encode_frame, FrameReader             length-prefixed frames with a size limit
messages.py    Invoke, Result, ErrorReply, Forward,
               Generate, Chunk, Done, Cancel,
               WireLimits, encode_message,
               MessageReader                         the invoke protocol's frames and messages
generation.py  GenerationParams, choose_token,
               TextStream, ChatFormat, Prompt,
               GenerationFacts, PromptTemplate      text generation without I/O: sampling, stop
                                                     strings, chat turns, a model's metadata
schema.py      TensorSpec, ModelSchema, check_inputs,
               tensor_mismatch                       a model's I/O; the input checks and the
                                                     per-tensor check declared outputs use too
batching.py    Batching, check_batchable,
               take_batch, next_due, split_rows      dynamic batching: which queued calls run
                                                     together and when, outputs split by rows
model_id.py    model_id_of_bytes, parse_model_id     CIDv1 raw sha2-256 model IDs
model_info.py  ModelInfo                             what a model is: ID, size, schema, name,
                                                     version, runtime
peer_id.py     peer_id_from_public_key, ...          libp2p peer IDs of Ed25519 keys
identity.py    Identity                              a peer's Ed25519 key, peer ID, key file bytes
address.py     PeerAddress, parse_peer_address,
               split_peer_id, with_peer_id           peer addresses; the one /p2p/ split
address_filter.py  addrs_seen_at, addrs_for_scope,     which announced addresses to keep (where
               ip_group                              a peer is seen); which to exchange with a
                                                     peer (by its scope: loopback, private,
                                                     public); an address's /16 or /32
access.py      AccessPolicy, parse_allow_list        per-model access lists
fields.py      check_peer_id, check_text, ...       checks of signed messages' fields
records.py     CapabilityRecord, sign_record,        signed capability records: canonical
               verify_record, supersedes             encoding, envelope, verification
receipts.py    Receipt, sign/verify_receipt,
               ReceiptChain, Acknowledgement,        signed usage receipts, their per-pair chain,
               tensor_hash, check_receipt_for_call   the caller's countersigned running total;
                                                     canonical hashes of request and result
describe.py    DescribeRequest, RecordsReply,
               DescribeReader                        the describe protocol's messages
ranking.py     ProviderStatsTable                    provider ranking: latency, failure cooldown,
                                                     backoff
pricing.py     Price, Usage, units_for,
               price_from_wire,
               rank_by_cost_and_latency              prices in micro-units, the units of a call,
                                                     the record's price field, cost in ranking
credit.py      CreditPolicy, CreditLedger,
               admission_order                       per-peer credit: allowance, soft and hard
                                                     thresholds, admission order under load
failover.py    attempt_timeout, attempt_order,       calling one of several providers: the
               failure_report, output_mismatch       deadline split, order, error reported
pipeline.py    parse_pipeline, PipelineSpec,
               check_schemas, forward_plan           pipeline specs and their static checks
forwarding.py  hop_inputs, after_hop, with_trace     what a peer on a forwarded chain does next
spot_check.py  Sampler, compare_outputs, Tolerance,
               three_way, odd_one_out,               spot checks: which calls, comparing two
               wants_another_opinion,                results (bitwise or within a tolerance),
               checker_order                         the odd one out, who checks
join.py        JoinPlan, JoinPolicy, JoinStatus,
               buckets_to_fill                       joining a swarm: whom to ask next, backoff
                                                     when alone, which buckets to fill after
connections.py ConnectionLimits, ConnectionFacts,
               connections_to_close                  which idle connections to close when a
                                                     peer holds too many
callstats.py   CallStats, CallRecord, Histogram      calls served and made: counts by model and
                                                     outcome, latency buckets, bytes, recent ones
seen.py        SeenRecords                           the verified records a peer was sent lately
kad/           the sans-IO Kademlia core (its own __init__ maps it)
"""
