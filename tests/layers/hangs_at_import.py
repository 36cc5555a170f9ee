"""A student's file that never finishes importing."""

while True:
    pass
