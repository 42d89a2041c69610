"""The only code that touches py-libp2p; its exceptions become p2pnet errors here.

    host.py       open_host, Host, Stream, PeerAddress,   a running libp2p host (TCP, Noise,
                  parse_peer_address                      Yamux), streams, peer addresses
    identity.py   load_or_create_identity, peer_id_of     Ed25519 identity keys on disk
    interfaces.py ByteStream, StreamHost                  what services need from a host: both
                                                          hosts below satisfy it
    memory.py     MemoryNetwork, MemoryHost, MemoryStream an in-memory network with the same
                                                          interface, for tests and simulations
    logs.py       set_libp2p_log_level, Libp2pRecordFilter  py-libp2p's logging, quiet by default
    nat.py        NatTraversal, NatConfig, Reachability   NAT traversal: AutoNAT, circuit relay
                                                          v2 (relay and reservations), relayed
                                                          dials, DCUtR hole punching

Every workaround for py-libp2p behaviour lives here with a comment naming it.
"""
