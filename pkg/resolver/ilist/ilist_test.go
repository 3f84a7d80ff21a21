package ilist

import (
	"slices"
	"testing"
)

type item struct {
	Links[item]
	n int
}

func values(l *List[item, *item]) []int {
	var out []int
	for e := l.Front(); e != nil; e = l.Next(e) {
		out = append(out, e.n)
	}
	return out
}

func TestList(t *testing.T) {
	var l List[item, *item]
	items := make([]*item, 5)
	for i := range items {
		items[i] = &item{n: i}
		l.PushBack(items[i])
	}
	if got := values(&l); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("pushed 0..4: %v", got)
	}
	// The front, the back and one between.
	for _, i := range []int{0, 4, 2} {
		if !l.Remove(items[i]) {
			t.Fatalf("Remove(%d) = false for a linked element", i)
		}
		if items[i].Linked() {
			t.Fatalf("%d still linked after Remove", i)
		}
	}
	if got := values(&l); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("after removing 0, 4, 2: %v", got)
	}
	if l.Remove(items[2]) {
		t.Fatal("Remove of an element no longer linked reported true")
	}
	l.PushBack(items[2]) // an element taken out may come back
	l.Remove(items[1])
	l.Remove(items[3])
	if got := values(&l); !slices.Equal(got, []int{2}) {
		t.Fatalf("after re-adding 2 and removing 1, 3: %v", got)
	}
	l.Remove(items[2])
	if l.Front() != nil {
		t.Fatalf("empty list has a front: %v", l.Front().n)
	}
}
