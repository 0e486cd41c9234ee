"""Scale-out helpers shared by sharded replays and studies: connecting to Ray (lazily; nothing
else imports it) and landing files shipped back from other hosts."""
