"""`make bench`: the speed yardstick (`reference`) and side-by-side measurements of the project's paths."""
