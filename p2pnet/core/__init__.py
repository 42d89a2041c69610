"""The pure core: no I/O, no clock reads, no trio, no libp2p. Bytes in, values or errors out.

varint.py     encode_uvarint, decode_uvarint        multiformats unsigned varints
tensor.py     TensorHeader, encode/decode_*_tensor  tensors as msgpack ext types 1 and 2
messages.py   Invoke, Result, ErrorReply, WireLimits,
              encode_message, MessageReader         the invoke protocol's frames and messages
schema.py     TensorSpec, ModelSchema, check_inputs,
              tensor_mismatch                       a model's I/O; the input checks and the
                                                    per-tensor check declared outputs use too
model_id.py   model_id_of_bytes, parse_model_id     CIDv1 raw sha2-256 model IDs
peer_id.py    peer_id_from_public_key, ...          libp2p peer IDs of Ed25519 keys
records.py    CapabilityRecord, sign_record,        signed capability records: canonical
              verify_record, supersedes             encoding, envelope, verification
kad/          the sans-IO Kademlia core (its own __init__ maps it)
"""
