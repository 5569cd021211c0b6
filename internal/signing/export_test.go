package signing

// TicketMemoHits is how many member tickets were accepted without
// checking their signatures again (tests only).
func (v *Verifier) TicketMemoHits() uint64 {
	v.tickets.mu.Lock()
	defer v.tickets.mu.Unlock()
	return v.tickets.hits
}
