"""Running models; no networking.

onnx_model.py   inspect_model, ModelInfo   a model file's ID, size and schema (from the graph)
                OnnxModel                  one onnxruntime session: checked inputs, worker
                                           threads, concurrency and queue limits, timeouts
"""
