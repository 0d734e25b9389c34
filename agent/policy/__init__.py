"""Privacy and routing policy applied before a request leaves the device."""
