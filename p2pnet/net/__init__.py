"""Hosts and streams: the libp2p host, the in-memory network, and what both offer services.

Only ``host.py``, ``connmgr.py``, ``nat.py``, ``pnet.py``, ``yamux_window.py``,
``yamux_calls.py``, ``noise_writes.py``, ``dial_fixes.py``, ``multistream.py``,
``tcp_reads.py`` and ``logs.py`` import py-libp2p; its exceptions
become p2pnet errors there, and every workaround for its behaviour lives there with a
comment naming it. The other modules load without it.

    interfaces.py  ByteStream, StreamHost, HostWrapper     what services need from a host: both
                                                           hosts below satisfy it; a wrapper
                                                           base that passes everything on
    channels.py    StreamPool, read_message, read_request  pooled streams and the one request /
                                                           retry loop every client uses
    resources.py   ResourceLimits, ResourceLedger,         inbound stream and request-memory limits
                   ResourceLimitedHost, LimitedStream      per peer and in total, stall and idle
                                                           timeouts (like go-libp2p's resource
                                                           manager)
    host.py        open_host, Host, Stream, tune_libp2p    a running libp2p host (TCP, Noise,
                                                           Yamux) and its streams
    connmgr.py     ConnectionTrimmer                       closes a libp2p host's idle
                                                           connections above its limits
    memory.py      MemoryNetwork, MemoryHost, MemoryStream an in-memory network with the same
                                                           interface, for tests and simulations
    loopback.py    LoopbackHost, loopback_pair             streams from a peer to itself, in
                                                           the process
    yamux_window.py  install_window_wakeup                 a Yamux writer that wakes on window
                                                           updates instead of polling
    yamux_calls.py   install_call_patches                  Yamux credit per half window (no
                                                           WINDOW_UPDATE per read), frames
                                                           written without debug strings,
                                                           RTT pings every 5 min, not 30 s
    noise_writes.py  install_coalesced_writes              a long write's Noise messages sent
                                                           in one socket write
    notifees.py    install_quiet_notify                    swarm events only to notifees that
                                                           do something with them
    dial_fixes.py  install_dial_fixes                      dials that skip closed connections and
                                                           try the caller's address first; a
                                                           closing swarm's listeners closed first
    multistream.py install_pipelined_select                multistream-select's header and protocol
                                                           in one write, as go and rust send them
    tcp_reads.py   install_read_patches                    a connection's frames read from one
                                                           socket receive, not a read per piece
    patching.py    replace_attribute                       the workarounds' one-time replacement
                                                           of a py-libp2p attribute
    nat.py         NatTraversal                            NAT traversal: AutoNAT, circuit relay
                                                           v2, relayed dials, DCUtR hole punching
    nat_config.py  NatConfig, Reachability, DEFAULT_NAT    NAT settings and verdicts, plain values
    pnet.py        PnetConnection, install_pnet_hook       private networks (PSK v1) on connections
    swarm_key.py   SwarmKey, load_swarm_key,
                   write_swarm_key_file                    swarm keys and their files
    identity.py    load_or_create_identity                 identity key files on disk (mode 0600)
    dnsaddr.py     resolve_bootstrap, is_dnsaddr           /dnsaddr/ bootstrap names (DNS TXT)
    logs.py        set_libp2p_log_level, Libp2pRecordFilter  py-libp2p's logging, quiet by default
"""
