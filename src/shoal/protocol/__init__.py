"""Sans-IO Kafka wire protocol: frames, headers, the API table and record batches.

Nothing here touches a socket or an event loop, so every function can be fed
arbitrary bytes in a test or a fuzzer.
"""
