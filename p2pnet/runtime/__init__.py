"""Running models; no networking.

served.py         ServedModel                what the invoke server and Peer need of a model
                  RunSlots                   worker threads, concurrency and queue limits,
                                             timeouts: shared by every kind of model
onnx_model.py     inspect_model, ModelInfo   a model file's ID, size and schema (from the graph)
                  OnnxModel                  one onnxruntime session: checked inputs, RunSlots
callable_model.py read_manifest              an adapter manifest's ID (CID of its bytes) and
                                             declared schema (docs/adapters.md)
                  CallableModel              its Python function: checked inputs and outputs,
                                             RunSlots
"""
