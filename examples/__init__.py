"""The demo's simulator scenario and tickets (shipped for `cascade init`), and the generator of tickets."""
