"""`dispatch sip`: the telephony bridge between a SIP trunk (or PBX, or registrar) and dispatch."""
