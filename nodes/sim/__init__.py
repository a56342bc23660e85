"""Simulated Ollama and ComfyUI servers: real HTTP and WebSocket servers that behave as the real
ones do (see ../shared/comfyui/PROTOCOL.md), for tests, benchmarks and demos without a GPU."""
