"""Drop-in layers that offer other libraries' APIs on top of memsleep
(memsleep.compat.torch_memory_saver: the torch_memory_saver API)."""
