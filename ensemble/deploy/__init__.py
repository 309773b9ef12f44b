"""Running the work elsewhere: exported-graph engines (ONNX Runtime, OpenVINO) and training executors (local, Ray)."""
