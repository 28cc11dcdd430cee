"""The ground floor of imgsearch: typed errors, durable writes, default locations, thread
counts, the readers-writer lock and Ctrl-C handling. It imports nothing else of imgsearch;
every other floor may import it.

Import the modules themselves (imgsearch.ground.errors, imgsearch.ground.durable, ...): this
package imports nothing.
"""
