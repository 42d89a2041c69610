"""Running models; no networking.

served.py         ServedModel                what the invoke server and Peer need of a model
                  RunSlots                   worker threads, concurrency and queue limits,
                                             timeouts: shared by every kind of model
                  SlottedModel               the shell both models below share: checked
                                             inputs, run/run_sync/wait_idle on RunSlots
                  InlineRuns                 when a model's measured runs are tiny enough
                                             to run on the event loop, without a thread hop
batching.py       BatchedModel               a SlottedModel served with dynamic batching:
                                             concurrent calls run as one batch, each gets
                                             its rows back (decisions: core/batching.py)
catalogue.py      ModelCatalogue             what a peer serves: models by ID, their tasks and
                                             access lists
onnx_model.py     inspect_model              a model file's ModelInfo: ID, size, schema
                  OnnxModel                  a SlottedModel on one onnxruntime session
generative.py     GenerativeModel            a decoder ONNX file with its tokenizer inside: streamed
                                             generation token by token, and a text-in text-out
                                             tensor view; load_model_file picks it or OnnxModel
                  inspect_generative,        what a generative file says, without loading it;
                  inspect_model_file         any model file's ModelInfo
                  SessionStore, SessionLimits  conversations' caches kept between turns
callable_model.py read_manifest              an adapter manifest's ID (CID of its bytes) and
                                             declared schema (docs/adapters.md)
                  CallableModel              a SlottedModel on its Python function, outputs
                                             checked too (check_outputs)
"""
