"""On-device inference: onnxruntime-genai engine, prompts, confidence math."""
